"""Next-token cross-entropy (SyCoMode's `causal_language_model` objective)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from sycojax.objectives.weighting import weighted_mean


@jax.jit
def token_nll(logits: Float[Array, "b t v"], targets: Int[Array, "b t"]) -> Float[Array, "b t"]:
    """Per-position negative log-likelihood `−log softmax(z)[y] = logsumexp(z) − z[y]`, in fp32."""
    z = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(z, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jax.nn.logsumexp(z, axis=-1) - picked


@jax.jit
def row_nll(logits: Float[Array, "b t v"], targets: Int[Array, "b t"], weights: Array) -> Float[Array, " b"]:
    """Per-row weighted mean of `token_nll` (targets ALREADY ALIGNED to the logits, as `causal_language_model`).

    Positions of weight 0 contribute exactly 0 even where their target is not a vocabulary id (a row's
    special tokens); a row with no weight gives 0."""
    w = weights.astype(jnp.float32)
    nll = jnp.where(w > 0, token_nll(logits, targets), 0.0)
    return (nll * w).sum(-1) / jnp.maximum(w.sum(-1), 1.0)


@jax.jit
def causal_language_model(
    logits: Float[Array, "b t v"], targets: Int[Array, "b t"], weights: Array
) -> Float[Array, ""]:
    """Mean next-token cross-entropy over the weighted positions.

        loss = Σ_bt w[b,t] · (logsumexp_v z[b,t,v] − z[b,t,y[b,t]]) / Σ_bt w[b,t]

    `targets` are ALREADY ALIGNED to the logits: `targets[b, t]` is the token that `logits[b, t]`
    should predict, i.e. `tokens[b, t + 1]` for a plain causal LM. `next_token_targets` builds
    `(targets, weights)` from a token batch. Upstream SyCoMode applies this to the context text
    itself (memory tokens, if any, prepended and given weight 0).
    """
    return weighted_mean(token_nll(logits, targets), weights)


@jax.jit
def next_token_targets(
    tokens: Int[Array, "b t"], valid: Bool[Array, "b t"]
) -> tuple[Int[Array, "b t"], Float[Array, "b t"]]:
    """Shift a token batch into `(targets, weights)` for `causal_language_model`.

    `targets[:, t] = tokens[:, t + 1]` (the last column is filled with 0), and `weights[:, t] = 1`
    where both position `t` and `t + 1` are real tokens (`valid`), so padding on either side and
    the final position carry no loss.
    """
    targets = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
    nxt = jnp.concatenate([valid[:, 1:], jnp.zeros_like(valid[:, :1])], axis=1)
    return targets, (valid & nxt).astype(jnp.float32)
