"""CCM's one-pass training loss: the whole recurrent computation in one forward under the concat_recur
mask, with skip position ids and the LoRA active only at COMP positions; CE on the target turn."""

from __future__ import annotations

import jax.numpy as jnp

from sycojax.masks.ccm import ccm_mask, comp_flags, skip_positions
from sycojax.methods.ccm import trees
from sycojax.models import ModelConfig, forward
from sycojax.objectives import token_nll
from sycojax.objectives.weighting import weighted_mean


def ccm_forward_logits(params, trainable, cfg: ModelConfig, spec: trees.CCMSpec, tokens, valid):
    flags = comp_flags(tokens, trees.comp_first_id(cfg), spec.n_tok)
    mask = ccm_mask(tokens, trees.comp_first_id(cfg), spec.n_tok, valid, spec.attn_type, sink=spec.sink)
    pos = skip_positions(flags.is_comp, valid, spec.n_tok)
    return forward(params, tokens, cfg=cfg, positions=pos, mask=mask,
                   adapters=trees.adapters(trainable, spec, flags.is_comp)).logits


def output_nll(logits, tokens, weights):
    """Mean next-token NLL where `weights` is 1 (the target turn)."""
    targets = jnp.minimum(tokens[:, 1:], logits.shape[-1] - 1)  # COMP ids are never targets (weight 0)
    nll = token_nll(logits[:, :-1], targets)
    return weighted_mean(jnp.where(weights[:, :-1] > 0, nll, 0.0), weights[:, :-1])


def make_loss_fn(cfg: ModelConfig, spec: trees.CCMSpec):
    def loss_fn(trainable, frozen, batch, rng):
        del rng
        logits = ccm_forward_logits(frozen["base"], trainable, cfg, spec, batch["tokens"], batch["valid"])
        loss = output_nll(logits, batch["tokens"], batch["weights"])
        return loss, {"output_nll": loss}

    return loss_fn

