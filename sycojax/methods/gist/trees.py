"""Gisting's trees: the `<GIST>` embedding row (mean of the base embeddings) + LoRA (or the whole base),
how they reach the forward (`split_trees`), their serving form (`serving_trees`: LoRA merged) and LoRA sizes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from sycojax.adapters import init_lora, merge_lora
from sycojax.adapters.lora import resolve_targets
from sycojax.methods.gist.spec import GistSpec
from sycojax.models import Adapters, ModelConfig
from sycojax.models.init import param_shapes
from sycojax.models.model import _get


def init_trainable(params: dict, cfg: ModelConfig, spec: GistSpec, key: jax.Array) -> dict:
    """`{"gist": mean embedding (1, D), "lora": init_lora (B = 0)}` or `{"gist", "base": params}`."""
    table = _get(params, cfg.embed_path)
    gist = jnp.mean(jnp.asarray(table, jnp.float32), axis=0, keepdims=True)
    if spec.train_base == "full":
        return {"gist": gist, "base": jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)}
    return {"gist": gist, "lora": init_lora(params, cfg, spec.lora, key)}


def split_trees(base: dict | None, trainable: Mapping[str, Any], spec: GistSpec) -> tuple[dict, Adapters]:
    """(params to run, adapters) for a trainable tree: the base (or the trained full base) + gist (+ LoRA)."""
    if spec.train_base == "full":
        return trainable["base"], Adapters(embeddings=trainable["gist"])
    return base, Adapters(lora=trainable["lora"], embeddings=trainable["gist"], lora_scale=spec.lora.scale)


def serving_trees(base: dict | None, trainable: Mapping[str, Any], cfg: ModelConfig,
                  spec: GistSpec) -> tuple[dict, Adapters]:
    """For inference: LoRA merged into the base weights (`merge_lora`), only the gist row left as an adapter."""
    trainable = jax.tree.map(jnp.asarray, dict(trainable))
    params, adapters = split_trees(base, trainable, spec)
    if spec.train_base == "lora":
        params = merge_lora(params, adapters.lora, cfg, adapters.lora_scale)
    return params, Adapters(embeddings=adapters.embeddings)


def lora_bytes(cfg: ModelConfig, rank: int, targets: Sequence[str] = ("all",), itemsize: int = 4) -> int:
    """Bytes of a LoRA patch: `Σ_linears L · r · (in + out) · itemsize`."""
    root = "model" if cfg.arch == "llama" else "gpt_neox"
    names = resolve_targets(cfg, tuple(targets))
    total = 0
    for mods in param_shapes(cfg)[root]["layers"].values():
        for name, p in (mods.items() if isinstance(mods, dict) else []):
            if name in names and isinstance(p, dict) and "weight" in p:
                n, out_dim, in_dim = p["weight"]
                total += n * rank * (in_dim + out_dim)
    return total * itemsize
