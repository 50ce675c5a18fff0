"""The trainable tree of each method (`lora` | `memory` | `full`), how it reaches the forward
(`split_trees`: base params + `Adapters`), and its serving form (`student_params`: LoRA merged).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from sycojax.adapters import init_lora, init_memory, merge_lora
from sycojax.methods.sycomode.spec import Spec
from sycojax.models import Adapters, ModelConfig


def init_trainable(params, cfg: ModelConfig, spec: Spec, key, context_ids: Sequence[int] = ()) -> dict:
    if spec.method == "lora":
        return {"lora": init_lora(params, cfg, spec.lora, key)}
    if spec.method == "memory":
        return {"memory": init_memory(params, cfg, spec.num_mem_tokens, spec.mem_init, context_ids)}
    return {"base": jax.tree.map(jnp.asarray, params)}


def split_trees(params, trainable: dict, spec: Spec) -> tuple[dict, Adapters]:
    """(base params to run, adapters) for a trainable tree of any method."""
    if spec.method == "full":
        return trainable["base"], Adapters()
    if spec.method == "lora":
        return params, Adapters(lora=trainable["lora"], lora_scale=spec.lora.scale)
    return params, Adapters(embeddings=trainable["memory"])


def student_params(params, trainable, cfg: ModelConfig, spec: Spec) -> tuple[dict, Adapters]:
    """Params + adapters for fast inference: LoRA merged into the weights."""
    base, adapters = split_trees(params, trainable, spec)
    if spec.method == "lora":
        return merge_lora(base, adapters.lora, cfg, adapters.lora_scale), Adapters()
    return base, adapters


def tree_bytes(tree: Any) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))
