"""Gisting masks (Mu, Li & Goodman 2023): tokens after the gist span see the instruction only through it.

With `g_i = [tok_i is a gist token]` for one sequence,

    pre[i]  = revcumsum(g)[i] >= 1     (position i is at or before the LAST gist token)
    post[i] = cumsum(g)[i]    >= 1     (position i is at or after the FIRST gist token)

the method-specific rule `M[q, k]` is::

    gist:         M[q, k] = pre[k]  if pre[q]  else post[k]
    neg_control:  M[q, k] = pre[k]  if pre[q]  else (k > last gist)  = not pre[k]
    pos_control:  M[q, k] = 1

and a sequence with no gist token at all gets `M = 1`. The attention mask is
`M ∧ causal ∧ key-is-not-padding` (`gist_mask`). So under `gist` the instruction before the gist span is
visible to the gist tokens (and to itself) but not to anything after the last gist token; under
`neg_control` the tokens after the gist span see neither the instruction nor the gist tokens.

Positions are NOT changed by gisting: every token, gist tokens included, keeps its absolute position
(`sycojax.masks.core.positions_from_valid(valid)` under left padding). This matches upstream
(`jayelm/gisting`, `src/data/gist.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax.numpy as jnp
from jaxtyping import Array, Bool, Int

from sycojax.masks.core import causal, combine, padding

GistCondition = Literal["gist", "pos_control", "neg_control"]
GIST_CONDITIONS: tuple[str, ...] = ("gist", "pos_control", "neg_control")


def reverse_cumsum(x: Array, axis: int = -1) -> Array:
    """`out[i] = sum_{j >= i} x[j]` along `axis`."""
    return jnp.flip(jnp.cumsum(jnp.flip(x, axis), axis=axis), axis)


def gist_flags(tokens: Int[Array, "b t"], gist_id: int | Sequence[int]) -> Bool[Array, "b t"]:
    """`g[b, i] = tokens[b, i] in gist_id` (one id repeated k times upstream; several distinct ids also work)."""
    tokens = jnp.asarray(tokens)
    ids = jnp.atleast_1d(jnp.asarray(gist_id, dtype=tokens.dtype))
    return jnp.isin(tokens, ids)


def at_or_before_last_gist(g: Bool[Array, "b t"]) -> Bool[Array, "b t"]:
    """`pre = revcumsum(g) >= 1`: True up to and including the last gist token (all False without gists)."""
    return reverse_cumsum(g.astype(jnp.int32)) >= 1


def at_or_after_first_gist(g: Bool[Array, "b t"]) -> Bool[Array, "b t"]:
    """`post = cumsum(g) >= 1`: True from the first gist token on (all False without gists)."""
    return jnp.cumsum(g.astype(jnp.int32), axis=-1) >= 1


def gist_rule(g: Bool[Array, "b t"], condition: GistCondition = "gist") -> Bool[Array, "b 1 t t"]:
    """The gist-specific part `M[b, 0, q, k]` of the mask (no causal, no padding), from the gist flags `g`.

    See the module docstring for the formulas. Rows (sequences) without any gist token get `M = 1`.
    """
    if condition not in GIST_CONDITIONS:
        raise ValueError(f"unknown gist condition {condition!r}; use one of {GIST_CONDITIONS}")
    b, t = g.shape
    if condition == "pos_control":
        return jnp.ones((b, 1, t, t), dtype=bool)
    pre = at_or_before_last_gist(g)
    q_pre = pre[:, None, :, None]  # (b, 1, t, 1): the query is at or before the last gist
    k_pre = pre[:, None, None, :]  # (b, 1, 1, t)
    if condition == "gist":
        k_after = at_or_after_first_gist(g)[:, None, None, :]
    else:  # neg_control: only keys strictly after the last gist token
        k_after = ~k_pre
    m = jnp.where(q_pre, k_pre, k_after)
    has_gist = g.any(axis=-1)[:, None, None, None]
    return m | ~has_gist


def gist_mask(
    tokens: Int[Array, "b t"],
    gist_id: int | Sequence[int],
    valid: Bool[Array, "b t"],
    condition: GistCondition = "gist",
) -> Bool[Array, "b 1 t t"]:
    """Full attention mask for gisting: `gist_rule ∧ causal ∧ padding(valid)`.

    Args:
      tokens: token ids; gist tokens carry `gist_id` (ids >= the base vocab size by the sycojax convention).
      gist_id: the gist token id, or several ids (all count as gist tokens).
      valid: True at real tokens, False at padding (left or right).
      condition: "gist" | "pos_control" | "neg_control".
    """
    t = tokens.shape[1]
    return combine(gist_rule(gist_flags(tokens, gist_id), condition), causal(t), padding(valid))
