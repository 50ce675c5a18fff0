"""Wall-clock timing of one callable: warm-up runs (compilation), then min / median of timed runs.

    t = time_fn(lambda: step(x), repeats=5, warmup=1)
    t.min_s, t.median_s

A JAX result is waited on with `jax.block_until_ready` inside the timed region (dispatch is
asynchronous, so timing without it measures only the enqueue). PyTorch on CPU is synchronous; on
CUDA pass `sync=torch.cuda.synchronize`. Compilation happens in the warm-up runs and is excluded.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Timing:
    times_s: tuple[float, ...]
    first_s: float  # the first warm-up call (includes compilation / tracing)
    cpu_times_s: tuple[float, ...] = ()  # process CPU time (all threads) of each timed run

    @property
    def cpu_min_s(self) -> float:
        return min(self.cpu_times_s) if self.cpu_times_s else float("nan")

    @property
    def min_s(self) -> float:
        return min(self.times_s)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)


def block(x: Any) -> Any:
    """Wait for every JAX array in `x` (a no-op for anything else)."""
    jax = sys.modules.get("jax")  # never import it here: a PyTorch-only worker must not pay for JAX
    return x if jax is None else jax.block_until_ready(x)


def time_fn(
    fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1, sync: Callable[[Any], Any] = block,
    on_warm: Callable[[], Any] | None = None,
) -> Timing:
    """Call `fn` `warmup` times untimed, then `repeats` times timed; `sync(result)` ends each timed run;
    `on_warm()` runs between the two."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    first = 0.0
    for i in range(warmup):
        t0 = time.perf_counter()
        sync(fn())
        if i == 0:
            first = time.perf_counter() - t0
    if on_warm is not None:
        on_warm()
    times, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return Timing(tuple(times), first, tuple(cpu))
