"""The consolidation loss: the student's hidden states at the response positions (rows packed when
that saves padding, `masks.packing`) and the top-k distillation objective on them.
"""

from __future__ import annotations

import jax.numpy as jnp

from sycojax import objectives as obj
from sycojax.masks import causal_padding
from sycojax.masks import packing as pk
from sycojax.methods.sycomode.data import Targets, row_lengths
from sycojax.methods.sycomode.spec import Spec
from sycojax.methods.sycomode.trees import split_trees
from sycojax.models import Adapters, ModelConfig, forward, lm_head_weight


def packing_plan(targets: Targets, rows: int, enabled: bool = True, share_prefix: bool = True) -> pk.Packing | None:
    """How the loss packs its rows (`masks.packing`): `rows` consecutive rows of a (per-device) micro-batch
    end to end in one row, when that saves >= 10% of the padded slots; None = unpacked. With `share_prefix`,
    the leading tokens every row has in common (the chat template's system turn, the memory tokens) are held
    once per packed row (`packing.shared_prefix`): the same loss and gradients, fewer tokens."""
    if not enabled:
        return None
    lengths = targets.lengths()
    prefix = pk.shared_prefix(targets.tokens, lengths) if share_prefix else 0
    return pk.plan(lengths, rows, targets.tokens.shape[1], prefix=prefix)


def loop_packing(targets: Targets, c, enabled: bool = True) -> pk.Packing | None:
    """`packing_plan` for a run of the shared loop (`sycojax.train.train`) with config `c`: each step's
    `c.train.batch_size` rows split into `c.train.grad_accum` micro-batches over the data-parallel devices
    of `c.mesh`, and each device packs its own rows (groups never straddle two devices)."""
    from sycojax.train import sharding as shd  # the loop's mesh: the only training import a method needs here

    dp = shd.data_parallel_size(shd.make_mesh(c.mesh.to_dict()))
    return packing_plan(targets, int(c.train.batch_size) // int(c.train.grad_accum) // dp, enabled)


def response_hidden(params, adapters: Adapters, cfg: ModelConfig, tokens, resp_pos, lengths,
                    packing: pk.Packing | None = None):
    """The student's final hidden states at the response positions, (B, R, D): the rows right-padded (causal
    alone keeps their real tokens clean) or, with `packing`, packed (`masks.packing`; `lengths` = real tokens
    per row). Only these positions go through the LM head."""
    if packing is None:
        positions = jnp.arange(tokens.shape[1])[None].repeat(tokens.shape[0], 0)
        out = forward(params, tokens, cfg=cfg, positions=positions, mask=causal_padding(jnp.ones(tokens.shape, bool)),
                      adapters=adapters, return_logits=False)
        return jnp.take_along_axis(out.final_hidden, resp_pos[..., None], axis=1)
    tokens, positions, mask, starts = pk.pack(tokens, lengths, packing)
    out = forward(params, tokens, cfg=cfg, positions=positions, mask=mask, adapters=adapters, return_logits=False)
    return pk.gather(out.final_hidden, starts, resp_pos, packing)


def make_loss_fn(cfg: ModelConfig, spec: Spec, packing: pk.Packing | None = None):
    """`loss_fn(trainable, frozen, batch, rng)` for `sycojax.train.train` (batch from `Targets.train_arrays`).

    With `packing` (`packing_plan`), each group of `packing.rows` rows runs as one row of `packing.length`
    tokens with a block-diagonal causal mask, the prefix its rows share held once: the same loss and
    gradients without the padding slots' compute or the prefix's copies.

    loss = Σ_j w_j · CE(teacher top-k at response token j ‖ softmax(student logits / T)) / Σ_j w_j,
    which is KL(teacher‖student) on the top-k support plus the (constant) teacher top-k entropy; with
    `spec.topk_tail` the teacher's mass outside the top k is one more class (the configs' default: the
    renormalised loss lets the student drop the tail, and its full-vocabulary KL then plateaus — on
    SmolLM2, pirate persona, 12 steps: held-out KL 0.560 → 0.206 renormalised, → 0.120 with the tail).
    """

    def loss_fn(trainable, frozen, batch, rng):
        del rng
        params, adapters = split_trees(frozen.get("base"), trainable, spec)
        lengths = row_lengths(batch["resp_pos"], batch["resp_weights"])
        h = response_hidden(params, adapters, cfg, batch["tokens"], batch["resp_pos"], lengths, packing)
        weights = batch["resp_weights"]
        if spec.last_only:
            weights = obj.last_only_weights(weights)
        loss = obj.distill_topk_from_hidden(
            h, lm_head_weight(params, cfg), batch["topk_idx"], batch["topk_logprobs"], weights,
            temperature=spec.temperature, tail=spec.topk_tail,
        )
        return loss, {"distill_ce": loss}

    return loss_fn
