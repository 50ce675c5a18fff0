"""XLA:CPU settings sycojax applies before JAX creates its CPU client (imported by `sycojax/__init__`).

**YNN reduce fusions off.** jaxlib 0.10 hands dots, elementwise ops and reductions to YNNPACK
("ynn_fusion" in a profile). Its reductions are slow on the row reductions over the vocabulary that
every loss here does, and a reduction fused into the LM head's dot drags the dot down with it: on
the 2-core AMD EPYC this project benchmarks on, `log_softmax` over (1024, 49152) fp32 takes 270 ms
with them and 144 ms without (PyTorch: 122 ms), and the LoRA train step's head dot + `reduce_max`
fusion ran 1.16 s against ~0.4 s for the dot alone. Dots stay on YNNPACK. So we add
`--xla_cpu_experimental_ynn_fusion_type=-reduce` to `XLA_FLAGS`.

It is added only where it is safe and wanted:
- jaxlib is a version known to have the flag (`KNOWN_JAXLIB`): XLA aborts the process on a flag it
  does not know, so an unverified jaxlib gets nothing;
- the user has not set the flag themselves, and `SYCOJAX_XLA_CPU_DEFAULTS` is not `0`;
- JAX has not created its backends yet (flags are read once, at that point): importing sycojax
  first — as every launch script does — is enough.
It changes no result: only which kernel library runs a reduction (the parity and objective tests
run with it).
"""

from __future__ import annotations

import os
import sys
from importlib import metadata

YNN_REDUCE_OFF = "--xla_cpu_experimental_ynn_fusion_type=-reduce"
KNOWN_JAXLIB = ((0, 10),)  # (major, minor) of the jaxlibs whose XLA was checked to have the flag


def _jaxlib_minor() -> tuple[int, int] | None:
    try:
        major, minor = metadata.version("jaxlib").split(".")[:2]
        return int(major), int(minor)
    except (metadata.PackageNotFoundError, ValueError):
        return None


def _backends_started() -> bool:
    xb = sys.modules.get("jax._src.xla_bridge")
    return bool(xb is not None and getattr(xb, "_backends", None))


def apply_defaults() -> bool:
    """Add `YNN_REDUCE_OFF` to `XLA_FLAGS` where the module docstring's conditions hold; True if added."""
    flags = os.environ.get("XLA_FLAGS", "")
    if (os.environ.get("SYCOJAX_XLA_CPU_DEFAULTS", "1") == "0" or "xla_cpu_experimental_ynn_fusion_type" in flags
            or _jaxlib_minor() not in KNOWN_JAXLIB or _backends_started()):
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {YNN_REDUCE_OFF}".strip()
    return True
