"""HyperLoRA's loss: the generator's LoRA for each row's context, the student forward WITHOUT the context (one
LoRA per batch row), and the consolidation's cached-teacher top-k objective at the reply tokens.

    batch (one example per context): pooled (B, n, D), tokens (B, T), resp_pos / resp_weights (B, R),
                                     topk_idx / topk_logprobs (B, R, k)  (`data.Dataset.train_arrays`)
    generate_lora(gen, pooled) ─► per-row LoRA ─► forward(base, tokens, Adapters(lora_per_row=True))
        ─► final hidden at the reply positions ─► distill_topk_from_hidden (tail class on, as the consolidation)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sycojax import objectives as obj
from sycojax.methods import sycomode as sm
from sycojax.methods.hyperlora.data import topk_tail_kl
from sycojax.methods.hyperlora.generator import as_adapters, generate_lora
from sycojax.methods.hyperlora.spec import HyperConfig
from sycojax.models import ModelConfig, lm_head_weight


def student_hidden(gen: dict, base: dict, cfg: ModelConfig, hc: HyperConfig, pooled, tokens, resp_pos, resp_weights):
    """The student's final hidden states at the reply positions, each row with its own context's LoRA: (B, R, D)."""
    adapters = as_adapters(generate_lora(gen, pooled, hc), hc)
    lengths = sm.row_lengths(resp_pos, resp_weights)
    return sm.response_hidden(base, adapters, cfg, tokens, resp_pos, lengths, None)  # never packed: rows differ


def make_loss_fn(cfg: ModelConfig, hc: HyperConfig, *, temperature: float = 1.0, tail: bool = True):
    """`loss_fn(trainable, frozen, batch, rng)` for `sycojax.train.train`: trainable = the generator's trained
    entries (`generator.split_trained`), frozen = {"base": params, "reader_norm": ...}."""

    def loss_fn(trainable, frozen, batch, rng):
        del rng
        gen = dict(trainable, reader_norm=frozen["reader_norm"])
        h = student_hidden(gen, frozen["base"], cfg, hc, batch["pooled"], batch["tokens"], batch["resp_pos"],
                           batch["resp_weights"])
        loss = obj.distill_topk_from_hidden(h, lm_head_weight(frozen["base"], cfg), batch["topk_idx"],
                                            batch["topk_logprobs"], batch["resp_weights"], temperature=temperature,
                                            tail=tail)
        return loss, {"distill_ce": loss}

    return loss_fn


@functools.partial(jax.jit, static_argnames=("cfg", "hc"))
def row_topk_kl(gen, base, pooled, tokens, resp_pos, resp_weights, topk_idx, topk_logprobs, *, cfg, hc):
    """Per row: the student's (generated LoRA, no context) KL to the cached teacher on its top k + the rest
    (`data.topk_tail_kl`), per reply token: (B,). What validation reports as a gap closed against
    `Dataset.kl_before_topk`."""
    h = student_hidden(gen, base, cfg, hc, pooled, tokens, resp_pos, resp_weights)
    logits = jnp.einsum("brd,vd->brv", h, lm_head_weight(base, cfg)).astype(jnp.float32)
    s_top = jnp.take_along_axis(jax.nn.log_softmax(logits, -1), topk_idx, axis=-1)
    kl = topk_tail_kl(topk_logprobs, s_top)
    return jnp.sum(kl * resp_weights, 1) / jnp.maximum(jnp.sum(resp_weights, 1), 1.0)
