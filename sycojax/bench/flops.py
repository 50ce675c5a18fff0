"""Model FLOPs of the benchmark jobs, counted analytically (matmuls only; a multiply-add = 2 FLOPs).

The per-forward count (`forward_flops` and its parts) lives in `sycojax.models.flops`, below the methods that
use it too; it is re-exported here. This module adds generation, training and memory-traffic counts.

Per token and layer, every linear `W (out, in)` costs `2·in·out`; attention costs `2·2·n_heads·hd`
per visible key (`QKᵀ` and `PV`); the LM head costs `2·D·V` per token whose logits are computed.
"Visible keys" follow the causal mask (token `i` of a fresh sequence sees `i + 1` keys), so the
count is what the job needs, not what a particular implementation happens to compute (a kernel
that scores masked-out keys does extra work that is not counted). Norms, RoPE, softmax and
elementwise ops are left out (a few % here).

Bytes (`generate_bytes`): a lower bound on the memory traffic of decoding, for the weight-streaming
floor of the generate rows. Each forward call reads every weight once (the head's `V × D` matrix included;
the input embedding only as `B` gathered rows, counted as zero) and each new token's attention reads the
keys and values it sees. Activations, logits and writes are left out.

Training: the backward pass costs 1× the forward for activation gradients plus 1× for weight
gradients where the base weights train (full fine-tuning); with a frozen base (LoRA, memory
tokens) only the activation gradients and the adapters' small weight gradients are added.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from sycojax.models import ModelConfig
from sycojax.models.flops import _is_shape, attention_flops, forward_flops, layer_linear_shapes, linear_macs_per_token
from sycojax.models.init import param_shapes


def generate_flops(cfg: ModelConfig, prompt_lengths, new_tokens: int) -> float:
    """Prefill each prompt (logits for its last token only) then decode `new_tokens - 1` more tokens.

    The first new token comes from the prefill's last logits; each later step feeds one token.
    """
    total = 0.0
    for p in np.asarray(prompt_lengths).tolist():
        total += forward_flops(cfg, 1, p, logits=False) + 2 * cfg.hidden_size * cfg.vocab_size
        for i in range(new_tokens - 1):
            total += forward_flops(cfg, 1, 1, context=p + i)
    return total


def train_flops(cfg: ModelConfig, batch: int, seq: int, *, base_trains: bool, adapter_params: int = 0) -> float:
    """One training step: forward + backward (activation grads; weight grads if the base trains).

    `adapter_params`: trainable parameters applied as matmuls per token (LoRA: Σ r·(in+out)), whose
    forward, activation-gradient and weight-gradient costs are added (`3 · 2 · adapter_params` per token).
    """
    fwd = forward_flops(cfg, batch, seq)
    return (3.0 if base_trains else 2.0) * fwd + 6.0 * adapter_params * batch * seq


def lora_io_per_token(cfg: ModelConfig) -> int:
    """`Σ (in + out)` over every linear of every layer: LoRA rank r adds `r ·` this many MACs per token."""
    return int(sum(n * (o + i) for n, o, i in layer_linear_shapes(cfg)))


def weight_bytes(cfg: ModelConfig, itemsize: int = 4) -> int:
    """Bytes of the weights one forward call reads: every parameter except an untied input embedding
    (gathered by rows; a tied table is read whole by the LM head)."""
    leaves = jax.tree.flatten_with_path(param_shapes(cfg), is_leaf=_is_shape)[0]
    skip = () if cfg.tie_word_embeddings else tuple(cfg.embed_path)
    n = sum(math.prod(s) for p, s in leaves if tuple(k.key for k in p) != skip)
    return int(n * itemsize)


def generate_bytes(cfg: ModelConfig, prompt_lengths, new_tokens: int, itemsize: int = 4) -> float:
    """Lower bound on the bytes read by `generate_flops`' work when the prompts decode as ONE batch:
    `new_tokens` forward calls (one prefill + `new_tokens - 1` steps) each read the weights once, and
    every decoded token reads the K/V of the positions it sees (all layers)."""
    kv_per_position = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * itemsize
    kv = sum(kv_per_position * (p + i) for p in np.asarray(prompt_lengths).tolist() for i in range(1, new_tokens))
    return float(new_tokens * weight_bytes(cfg, itemsize) + kv)


__all__ = [
    "attention_flops", "forward_flops", "generate_bytes", "generate_flops", "layer_linear_shapes",
    "linear_macs_per_token", "lora_io_per_token", "train_flops", "weight_bytes",
]
