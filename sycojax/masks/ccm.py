"""Compressed Context Memory masks and position ids (Kim et al., ICLR 2024; `snu-mllab/Context-Memory`).

A CCM training sequence interleaves context segments with groups of `n_tok` compression tokens
`<COMP_0> ... <COMP_{n-1}>` (distinct ids `first_id + j`), e.g. with n_tok = 1::

    [BOS] c1 C SEP c2 C SEP ... I(t) SEP O(t)

Let `is_comp` flag every compression token, `is_first` / `is_last` the first / last token of a group
(`tok == first_id` / `tok == first_id + n_tok - 1`). For one sequence:

    seg(i) = revcumsum(is_last)[i]              segment id: number of groups ending at or after i
    pre(i) = revcumsum(is_first)[i] - is_first[i]   number of groups starting strictly after i

so a group's tokens share the segment id of the text before them, segments count down to 0 for the
text after the last group, and `pre(k) == seg(q)` holds exactly for the compression tokens of the group
just before q's segment (and q's own text). The rules (before causal / padding):

    concat_recur: M[q, k] = seg(q) == seg(k)  or  is_comp(k)        (every earlier COMP group stays visible)
    merge_recur:  M[q, k] = seg(q) == seg(k)  or  seg(q) == pre(k)  (only the previous group: the merged memory)

`sink=True` also keeps the first real token of each row (BOS) visible to every query. The final mask is
`(M ∨ sink) ∧ causal ∧ key-is-not-padding` (`ccm_mask`).

Position ids ("skip", upstream `update_position_ids`): text tokens get `cumsum(valid ∧ ¬comp) − 1`, so
compression tokens take no text position; the j-th token of a group (j = 1..n_tok) gets
`last_text_position + j`, computed as upstream with `j = (cumsum(comp) − 1) mod n_tok + 1` (assumes
complete groups of n_tok). Padding gets position 0.

For merge_recur upstream passes the SUM token ids as the compression ids; pass whichever ids mark the
groups the rule should see.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Bool, Int

from sycojax.masks.core import causal, combine, padding
from sycojax.masks.gist import reverse_cumsum

CCMAttention = Literal["concat_recur", "merge_recur"]
CCM_ATTN_TYPES: tuple[str, ...] = ("concat_recur", "merge_recur")


class CompFlags(NamedTuple):
    """Boolean `(b, t)` flags of the compression tokens."""

    is_comp: Bool[Array, "b t"]
    is_first: Bool[Array, "b t"]
    is_last: Bool[Array, "b t"]


def comp_flags(tokens: Int[Array, "b t"], first_id: int, n_tok: int) -> CompFlags:
    """Flags for COMP ids `first_id .. first_id + n_tok - 1` (group = one run of those ids)."""
    if n_tok < 1:
        raise ValueError(f"n_tok must be >= 1, got {n_tok}")
    is_comp = (tokens >= first_id) & (tokens < first_id + n_tok)
    return CompFlags(is_comp, tokens == first_id, tokens == first_id + n_tok - 1)


def segment_ids(is_last: Bool[Array, "b t"]) -> Int[Array, "b t"]:
    """`seg(i) = revcumsum(is_last)[i]`: groups ending at or after i (0 after the last group)."""
    return reverse_cumsum(is_last.astype(jnp.int32))


def groups_after(is_first: Bool[Array, "b t"]) -> Int[Array, "b t"]:
    """`pre(i) = revcumsum(is_first)[i] - is_first[i]`: groups starting strictly after i."""
    f = is_first.astype(jnp.int32)
    return reverse_cumsum(f) - f


def concat_recur_rule(is_comp: Bool[Array, "b t"], is_last: Bool[Array, "b t"]) -> Bool[Array, "b 1 t t"]:
    """`M[q, k] = seg(q) == seg(k) or is_comp(k)`."""
    seg = segment_ids(is_last)
    same = seg[:, None, :, None] == seg[:, None, None, :]
    return same | is_comp[:, None, None, :]


def merge_recur_rule(is_first: Bool[Array, "b t"], is_last: Bool[Array, "b t"]) -> Bool[Array, "b 1 t t"]:
    """`M[q, k] = seg(q) == seg(k) or seg(q) == pre(k)`."""
    seg = segment_ids(is_last)
    pre = groups_after(is_first)
    q = seg[:, None, :, None]
    return (q == seg[:, None, None, :]) | (q == pre[:, None, None, :])


def sink_keys(valid: Bool[Array, "b s"]) -> Bool[Array, "b 1 1 s"]:
    """The first real token of each row (the BOS under left padding), as a key every query may see."""
    first = valid & (jnp.cumsum(valid.astype(jnp.int32), axis=-1) == 1)
    return first[:, None, None, :]


def ccm_mask(
    tokens: Int[Array, "b t"],
    first_id: int,
    n_tok: int,
    valid: Bool[Array, "b t"],
    attn_type: CCMAttention = "concat_recur",
    sink: bool = False,
) -> Bool[Array, "b 1 t t"]:
    """`(rule ∨ sink) ∧ causal ∧ padding(valid)` for CCM's recurrent training sequences."""
    flags = comp_flags(tokens, first_id, n_tok)
    if attn_type == "concat_recur":
        rule = concat_recur_rule(flags.is_comp, flags.is_last)
    elif attn_type == "merge_recur":
        rule = merge_recur_rule(flags.is_first, flags.is_last)
    else:
        raise ValueError(f"unknown CCM attention type {attn_type!r}; use one of {CCM_ATTN_TYPES}")
    if sink:
        rule = rule | sink_keys(valid)
    return combine(rule, causal(tokens.shape[1]), padding(valid))


def skip_positions(is_comp: Bool[Array, "b t"], valid: Bool[Array, "b t"], n_tok: int) -> Int[Array, "b t"]:
    """CCM "skip" position ids (see module docstring); padding gets 0."""
    text = (valid & ~is_comp).astype(jnp.int32)
    pos = jnp.cumsum(text, axis=-1) - 1
    j = (jnp.cumsum(is_comp.astype(jnp.int32), axis=-1) - 1) % n_tok + 1
    pos = jnp.where(is_comp, pos + j, pos)
    return jnp.where(valid, jnp.maximum(pos, 0), 0)
