"""Gisting's loss: next-token cross-entropy on the completion tokens only, under the condition's mask
(`masks.gist_mask`), and its mean over a set of examples (teacher-forced evaluation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from sycojax.data import (
    IGNORE_INDEX,
    GistExample,
)
from sycojax.data.sources import require_nonempty
from sycojax.masks import gist_mask, positions_from_valid
from sycojax.methods.gist.data import batch_arrays
from sycojax.methods.gist.spec import GistSpec
from sycojax.methods.gist.trees import split_trees
from sycojax.models import Adapters, ModelConfig, forward
from sycojax.objectives import token_nll


def completion_nll(
    params: dict, adapters: Adapters, batch: Mapping[str, Any], *, cfg: ModelConfig, gist_id: int, condition: str,
    remat: bool | str = False,
) -> tuple[jax.Array, jax.Array]:
    """`(Σ nll over completion tokens, number of completion tokens)` of a left-padded batch under `condition`.

    The loss is their ratio: the mean next-token cross-entropy (`token_nll`) of the completion, as
    `sycojax.objectives.causal_language_model` with `weights = [label ≠ IGNORE_INDEX]`; the sums let
    evaluation aggregate over batches exactly.

    batch: `tokens (B, T)`, `labels (B, T)` (IGNORE_INDEX off the completion, aligned with tokens), `valid (B, T)`.
    """
    tokens, labels, valid = batch["tokens"], batch["labels"], batch["valid"]
    mask = gist_mask(tokens, gist_id, valid, condition)
    out = forward(params, tokens, cfg=cfg, positions=positions_from_valid(valid), mask=mask, adapters=adapters,
                  remat=remat)
    targets = labels[:, 1:]
    weights = (targets != IGNORE_INDEX).astype(jnp.float32)
    nll = token_nll(out.logits[:, :-1], jnp.where(targets == IGNORE_INDEX, 0, targets))
    return jnp.sum(nll * weights), jnp.sum(weights)


def make_loss_fn(cfg: ModelConfig, spec: GistSpec, gist_id: int) -> Callable:
    """`loss_fn(trainable, frozen, batch, rng)` for `sycojax.train.train` (batch from `batch_arrays`)."""

    def loss_fn(trainable, frozen, batch, rng):
        del rng
        params, adapters = split_trees(frozen.get("base"), trainable, spec)
        total, count = completion_nll(params, adapters, batch, cfg=cfg, gist_id=gist_id, condition=spec.condition,
                                      remat=spec.remat)
        loss = total / jnp.maximum(count, 1.0)
        return loss, {"completion_ce": loss, "completion_tokens": count}

    return loss_fn


@functools.partial(jax.jit, static_argnames=("cfg", "gist_id", "condition"))
def _nll_sums(params, adapters, batch, *, cfg, gist_id, condition):
    return completion_nll(params, adapters, batch, cfg=cfg, gist_id=gist_id, condition=condition)


def mean_completion_loss(
    params: dict, adapters: Adapters, cfg: ModelConfig, examples: Sequence[GistExample], *, gist_id: int,
    condition: str, length: int, pad_id: int, batch_size: int = 8,
) -> float:
    """Teacher-forced loss per completion token over `examples` (fixed batch shape; padded rows count 0)."""
    require_nonempty(examples, "examples for the loss")
    tot, cnt = 0.0, 0.0
    for i in range(0, len(examples), batch_size):
        chunk = list(examples[i : i + batch_size])
        n_real = len(chunk)
        chunk += [chunk[-1]] * (batch_size - n_real)
        arrays = batch_arrays(chunk, pad_id=pad_id, length=length)
        arrays["labels"][n_real:] = IGNORE_INDEX
        batch = {k: jnp.asarray(arrays[k]) for k in ("tokens", "labels", "valid")}
        s, c = _nll_sums(params, adapters, batch, cfg=cfg, gist_id=gist_id, condition=condition)
        tot += float(s)
        cnt += float(c)
    return tot / max(cnt, 1.0)
