"""How per-position losses become one number: weighted means and the `last_only` selection.

Every objective in this package computes a per-position loss `l[b, t]` and reduces it with
non-negative weights `w[b, t]` (a 0/1 loss mask, or soft weights):

    loss = Σ_bt w[b,t] · l[b,t] / Σ_bt w[b,t]          (0 when Σ w = 0)

so padding, prompt tokens or anything else the method does not train on simply get weight 0.
Positions with weight 0 are excluded with `jnp.where`, so a NaN or inf there does not leak into
the loss value.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


@jax.jit
def weighted_mean(values: Float[Array, "b t"], weights: Array) -> Float[Array, ""]:
    """`Σ w·v / Σ w` over all positions, in fp32; 0 when every weight is 0."""
    w = weights.astype(jnp.float32)
    v = jnp.where(w > 0, values.astype(jnp.float32), 0.0)
    total = jnp.sum(w)
    return jnp.sum(w * v) / jnp.where(total > 0, total, 1.0)


@jax.jit
def last_only_weights(weights: Array) -> Float[Array, "b t"]:
    """Keep, in each row, only the LAST position with a non-zero weight (its weight unchanged).

    This is upstream SyCoMode's convention (it matched the teacher at the final position only).
    Rows with no weighted position stay all-zero. Example: `[[1, 1, 0], [0, 1, 1]]` →
    `[[0, 1, 0], [0, 0, 1]]`.
    """
    w = weights.astype(jnp.float32)
    t = w.shape[-1]
    present = w > 0
    last = t - 1 - jnp.argmax(present[..., ::-1], axis=-1)  # (b,)
    onehot = jnp.arange(t) == last[..., None]
    return jnp.where(onehot & present, w, 0.0)


@functools.partial(jax.jit, static_argnames="last_only")
def select_weights(weights: Array, last_only: bool) -> Float[Array, "b t"]:
    """`weights` as fp32, restricted to each row's last weighted position when `last_only`."""
    return last_only_weights(weights) if last_only else weights.astype(jnp.float32)
