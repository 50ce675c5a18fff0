"""Small helpers more than one method uses: the padding id, fixed-size batches, LoRA target lists, the frozen
stream entering a block (`cache_hidden`: document memory and kNN distillation train on it).

Each does one thing the methods used to write out on their own (gisting and its LoRA compression, the
consolidation bench); anything bigger that two methods share belongs in a layer below (`data/`, `eval/`,
`infer/`, ...).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sycojax.masks import causal_padding, positions_from_valid
from sycojax.models import ModelConfig, hidden_at


def refuse_occupied_workdir(workdir, resume: bool, overwrite: bool, error: type[Exception]) -> None:
    """Raise `error` when `workdir` already holds files and neither `--resume` nor `--overwrite` was given: a new
    run never writes over an old one. (Deleting for `--overwrite` is the caller's, once its inputs are checked.)"""
    if workdir.exists() and any(workdir.iterdir()) and not (resume or overwrite):
        raise error(f"--config.workdir {workdir} already holds a run; pass --resume to continue it, --overwrite to "
                    "replace it, or a new --config.workdir. Nothing was overwritten.")


def padding_id(cfg: ModelConfig, tok: Any = None) -> int:
    """The id padded rows are filled with: the model's pad id, else the tokenizer's, else its first EOS, else 0."""
    for p in (cfg.pad_token_id, getattr(tok, "pad_token_id", None), *(cfg.eos_ids or ())):
        if p is not None:
            return int(p)
    return 0


def fixed_batches(items: Sequence, size: int) -> Iterator[tuple[list, int]]:
    """Fixed-size chunks (the last padded by repeating its last item) and the number of real items in each:
    one compiled shape for every batch."""
    for i in range(0, len(items), size):
        chunk = list(items[i : i + size])
        n = len(chunk)
        yield chunk + [chunk[-1]] * (size - n), n


def lora_targets(text: Any) -> tuple[str, ...]:
    """A config's comma list of LoRA targets (`"all"`, `"q_proj,v_proj"`) as a tuple of names."""
    return tuple(t.strip() for t in str(text).split(",") if t.strip())


@functools.partial(jax.jit, static_argnames=("cfg", "layer"))
def cache_hidden(params, tokens, valid, *, cfg: ModelConfig, layer: int):
    """The frozen stream entering block `layer` for a batch of rows (`(B, T)` tokens, `valid` mask): computed
    once, then every step resumes with `forward(embeddings=h, start_layer=layer)`."""
    return hidden_at(params, tokens, cfg=cfg, positions=positions_from_valid(valid), mask=causal_padding(valid),
                     layer=layer)


def cache_hidden_rows(params, tokens, valid, *, cfg: ModelConfig, layer: int, batch: int = 16) -> np.ndarray:
    """`cache_hidden` over many rows (numpy `(N, T)` tokens / valid), `batch` rows per call: `(N, T, D)` on the host."""
    return np.concatenate([np.asarray(cache_hidden(params, jnp.asarray(tokens[i : i + batch]),
                                                   jnp.asarray(valid[i : i + batch]), cfg=cfg, layer=layer))
                           for i in range(0, len(tokens), batch)])


COST = "cost.json"


def accumulate_cost(workdir: Path, timings: dict) -> dict:
    """The seconds of every invocation on `workdir` summed per phase (e.g. data, train, eval, total), so
    a run finished by `--resume` still reports what it cost; kept in `<workdir>/cost.json`."""
    path = workdir / COST
    old = json.loads(path.read_text()) if path.is_file() else {}
    runs = int(old.pop("invocations", 0)) + 1
    now = {"data_s": sum(v for k, v in timings.get("data", {}).items() if k.endswith("_s") and "per" not in k)}
    now.update({k: v for k, v in timings.items() if k != "data"})
    cost = {k: round(float(old.get(k, 0.0)) + float(now.get(k, 0.0)), 1) for k in sorted({*old, *now})}
    cost["invocations"] = runs
    path.write_text(json.dumps(cost, indent=1))
    return cost
