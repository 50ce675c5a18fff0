"""Model FLOPs of a forward, counted analytically from the config (matmuls only; a multiply-add = 2 FLOPs).

Per token and layer, every linear `W (out, in)` costs `2·in·out`; attention costs `2·2·n_heads·hd`
per visible key (`QKᵀ` and `PV`); the LM head costs `2·D·V` per token whose logits are computed.
"Visible keys" follow the causal mask (token `i` of a fresh sequence sees `i + 1` keys), so the
count is what the job needs, not what a particular implementation happens to compute (a kernel
that scores masked-out keys does extra work that is not counted). Norms, RoPE, softmax and
elementwise ops are left out (a few % here).

Used by the methods (gisting's efficiency figures) and by the benchmark (`sycojax.bench.flops` adds
generation, training and memory-traffic counts on top of these).
"""

from __future__ import annotations

import math

import jax

from sycojax.models.config import ModelConfig
from sycojax.models.init import param_shapes


def _is_shape(x):
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def layer_linear_shapes(cfg: ModelConfig) -> list[tuple[int, int, int]]:
    """`(L, out, in)` of every transformer-block linear weight (stacked over the L layers)."""
    root = "model" if cfg.arch == "llama" else "gpt_neox"
    layers = param_shapes(cfg)[root]["layers"]
    paths = jax.tree.flatten_with_path(layers, is_leaf=_is_shape)[0]
    return [s for p, s in paths if p[-1].key == "weight" and len(s) == 3]


def linear_macs_per_token(cfg: ModelConfig) -> int:
    """Multiply-adds of all transformer-block linears for one token."""
    return int(sum(math.prod(s) for s in layer_linear_shapes(cfg)))


def attention_flops(cfg: ModelConfig, visible_keys: int) -> int:
    """FLOPs of `QKᵀ` and `PV` for one query token seeing `visible_keys` keys, all layers."""
    return 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * visible_keys


def forward_flops(cfg: ModelConfig, batch: int, seq: int, *, context: int = 0, logits: bool = True) -> float:
    """A forward over `batch × seq` new tokens after `context` cached ones (causal)."""
    per_token = 2 * linear_macs_per_token(cfg) + (2 * cfg.hidden_size * cfg.vocab_size if logits else 0)
    visible = seq * context + seq * (seq + 1) // 2  # Σ_i (context + i + 1)
    return float(batch * (seq * per_token + attention_flops(cfg, 1) * visible))
