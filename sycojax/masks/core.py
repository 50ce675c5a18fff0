"""Boolean attention-mask builders: the generic pieces every method composes.

A mask is a boolean array `(B, 1, T, S)`: `mask[b, 0, q, k]` is True where query position `q` may
attend to key position `k`. Method-specific rules (gist, CCM, ...) live in sibling modules and are
combined with these by `&` (see `combine`). The model only consumes the result.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Bool


def causal(t: int, s: int | None = None, offset: int = 0) -> Bool[Array, "1 1 t s"]:
    """Query `q` (at absolute index `offset + q`) sees keys `k <= offset + q`."""
    s = t if s is None else s
    q = jnp.arange(t)[:, None] + offset
    k = jnp.arange(s)[None, :]
    return (k <= q)[None, None]


def padding(valid: Bool[Array, "b s"]) -> Bool[Array, "b 1 1 s"]:
    """Keys that are real tokens (not padding)."""
    return valid[:, None, None, :]


def combine(*masks) -> Bool[Array, "b 1 t s"]:
    """AND of broadcastable masks."""
    out = masks[0]
    for m in masks[1:]:
        out = out & m
    return out


def causal_padding(valid: Bool[Array, "b t"]) -> Bool[Array, "b 1 t t"]:
    """The standard decoder mask: causal AND key-is-not-padding."""
    t = valid.shape[1]
    return combine(causal(t), padding(valid))


def positions_from_valid(valid: Bool[Array, "b t"]) -> Array:
    """Positions that skip left padding: 0 at the first real token (padding rows get 0)."""
    return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1, 0)
