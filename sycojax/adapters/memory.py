"""Memory tokens: `n` trainable embedding rows that stand in for a context (SyCoMode `--num-mem-tokens`).

They get token ids `V .. V+n-1` (V = vocab size) and live in their own `(n, D)` table, read by the
model through `Adapters(embeddings=...)`; the base embedding matrix never changes. `insert_after_bos`
places them right after the first token of a sequence, as SyCoMode does.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from sycojax.models.config import ModelConfig
from sycojax.models.model import _get

INITS = ("mean", "context")


def init_memory(params: dict, cfg: ModelConfig, n: int, init: str = "mean",
                context_ids: Sequence[int] = ()) -> jnp.ndarray:
    """`(n, D)` rows: the mean of all embeddings, or the context's own token embeddings (cycled/averaged)."""
    if n < 1:
        raise ValueError(f"need at least one memory token, got n={n}")
    table = np.asarray(_get(params, cfg.embed_path), np.float32)
    if init == "mean":
        return jnp.asarray(np.repeat(table.mean(0, keepdims=True), n, axis=0))
    if init == "context":
        if not len(context_ids):
            raise ValueError("init='context' needs the context's token ids")
        chunks = np.array_split(np.asarray(context_ids), n) if len(context_ids) >= n else [
            np.asarray([context_ids[i % len(context_ids)]]) for i in range(n)]
        return jnp.asarray(np.stack([table[c].mean(0) for c in chunks]))
    raise ValueError(f"unknown memory init {init!r}; choose one of {INITS}")


def memory_ids(cfg: ModelConfig, n: int) -> list[int]:
    return list(range(cfg.vocab_size, cfg.vocab_size + n))


def insert_after_bos(ids: Sequence[int], cfg: ModelConfig, n: int) -> list[int]:
    """`[t0, MEM0..MEMn-1, t1, ...]`: memory tokens right after the first (BOS / chat-start) token."""
    ids = list(ids)
    return ids[:1] + memory_ids(cfg, n) + ids[1:] if n else ids
