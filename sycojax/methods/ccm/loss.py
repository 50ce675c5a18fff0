"""CCM's one-pass training loss: the whole recurrent computation in one forward under the concat_recur or
merge_recur mask (gist and the full reference: `trees.py`), with skip position ids and the LoRA active only at COMP (and SUM) positions; CE on the
target turn. merge_recur's running mean of the SUM K/V is `merge.forward_merge`."""

from __future__ import annotations

import jax.numpy as jnp

from sycojax.masks import causal_padding, positions_from_valid
from sycojax.masks.ccm import ccm_mask, comp_flags, skip_positions
from sycojax.methods.ccm import merge, trees
from sycojax.models import ModelConfig, forward
from sycojax.objectives import token_nll
from sycojax.objectives.weighting import weighted_mean


def ccm_forward_logits(params, trainable, cfg: ModelConfig, spec: trees.CCMSpec, tokens, valid):
    """Logits of CCM training rows (`data.dialog_rows` with `trees.group_ids`) in one parallel pass.

    concat_recur: the mask is built on the COMP ids. merge_recur: on the SUM ids (upstream), so each segment
    sees itself and the previous SUM group, whose K/V `forward_merge` makes the running mean of the COMP K/V.
    gist rows hold one group, where the concat_recur rule is the gist mask; the full reference is a plain causal
    forward with its LoRA everywhere."""
    if spec.full:
        return forward(params, tokens, cfg=cfg, positions=positions_from_valid(valid), mask=causal_padding(valid),
                       adapters=trees.adapters(trainable, spec, valid)).logits
    first, n = trees.comp_first_id(cfg), spec.n_tok
    is_comp = comp_flags(tokens, first, len(trees.group_ids(cfg, spec))).is_comp  # COMP and SUM: LoRA, positions
    pos = skip_positions(is_comp, valid, n)
    adapters = trees.adapters(trainable, spec, is_comp)
    if not spec.merge:
        mask = ccm_mask(tokens, first, n, valid, "concat_recur", sink=spec.sink)
        return forward(params, tokens, cfg=cfg, positions=pos, mask=mask, adapters=adapters).logits
    mask = ccm_mask(tokens, trees.sum_first_id(cfg, spec), n, valid, "merge_recur", sink=spec.sink)
    return merge.forward_merge(params, tokens, cfg=cfg, positions=pos, mask=mask, adapters=adapters,
                               first_id=first, n_tok=n)


def logits_or_base(params, trainable, cfg: ModelConfig, spec: trees.CCMSpec, tokens, valid):
    """`ccm_forward_logits` of the kind, or with `trainable=None` the frozen base on the same rows (causal)."""
    if trainable is None:
        return forward(params, tokens, cfg=cfg, positions=positions_from_valid(valid), mask=causal_padding(valid)).logits
    return ccm_forward_logits(params, trainable, cfg, spec, tokens, valid)


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
