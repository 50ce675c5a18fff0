"""CCM's trainable trees: COMP-token embeddings and the conditional LoRA (active only at COMP positions).

    comp:  (n_tok, D) fp32 rows for ids V .. V+n_tok-1; slot k starts at the mean of vocab rows k::n_tok
           (upstream Context-Memory's initialisation).
    lora:  q, k, v, o of every block, r = 8, alpha = 16 (upstream); gated by `is_comp`, so text positions
           run the frozen base exactly.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sycojax.adapters import LoraConfig, init_lora
from sycojax.masks.ccm import CCM_ATTN_TYPES
from sycojax.models import Adapters, ModelConfig
from sycojax.models.model import _get


@dataclasses.dataclass(frozen=True)
class CCMSpec:
    n_tok: int = 2
    attn_type: str = "concat_recur"
    lora: LoraConfig = dataclasses.field(default_factory=lambda: LoraConfig(rank=8, alpha=16.0,
                                                                            targets=("q", "k", "v", "o")))
    sink: bool = False

    def __post_init__(self):
        if self.n_tok < 1:
            raise ValueError(f"n_tok={self.n_tok}: CCM needs at least one COMP token per turn")
        if self.attn_type != "concat_recur":
            choices = ", ".join(CCM_ATTN_TYPES)
            raise NotImplementedError(
                f"attn_type={self.attn_type!r}: only concat_recur trains today (merge_recur's running mean of "
                f"SUM K/V is not built yet; masks exist for {choices})")


def comp_first_id(cfg: ModelConfig) -> int:
    return cfg.vocab_size


def init_comp(params: dict, cfg: ModelConfig, n_tok: int) -> jax.Array:
    table = np.asarray(_get(params, cfg.embed_path), np.float32)
    return jnp.asarray(np.stack([table[k::n_tok].mean(0) for k in range(n_tok)]))


def init_trainable(params: dict, cfg: ModelConfig, spec: CCMSpec, rng: jax.Array) -> dict:
    return {"comp": init_comp(params, cfg, spec.n_tok), "lora": init_lora(params, cfg, spec.lora, rng)}


def adapters(trainable: dict, spec: CCMSpec, is_comp: jax.Array) -> Adapters:
    """The model's view of the trees for one batch: LoRA only where `is_comp`, COMP rows as extra ids."""
    return Adapters(lora=trainable["lora"], gate=is_comp.astype(jnp.float32), embeddings=trainable["comp"],
                    lora_scale=spec.lora.alpha / spec.lora.rank)
