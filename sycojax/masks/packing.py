"""Sequence packing: several right-padded rows laid end to end in one row, attending only within their own.

A batch of `B` right-padded rows of width `T` spends compute on every padding slot. Packing puts each
group of `rows` consecutive rows into one row of `length` slots (`length` < `rows · T`), with

    segment[p]  = which row of the group slot p holds (-1 past the group's last real token),
    position[p] = the token's position inside its own row (RoPE sees the same positions as unpacked),
    mask[q, k]  = segment[q] == segment[k] and k <= q   (block-diagonal causal).

A row's real tokens see exactly the keys they see unpacked, at the same positions, so every real
position's hidden state is the unpacked one (up to float summation order). Padding slots only see each
other. Groups are consecutive rows, so a batch sharded over devices along its rows keeps each group on
one device when `rows` divides the per-device rows (`plan` takes that count).

Shared prefix. When every row begins with the same `prefix` tokens (a chat template's system turn, the
memory tokens), a group holds them once, in its first `prefix` slots, and each row only its own tail:

    [ shared prefix | row 0 tail | row 1 tail | ... | padding ]
    mask[q, k] = k <= q and (segment[q] == segment[k] or k < prefix)

The prefix's tokens see only the prefix, as in every row unpacked, so its hidden states are every row's;
each tail sees the prefix and itself at its unpacked positions. A causal model gives every real position
its unpacked hidden state, and the gradient through the one copy of the prefix is the sum of the rows'
gradients through theirs: the same loss and gradient, `(rows - 1) · prefix` fewer slots.

    prefix = packing.shared_prefix(rows_tokens, lengths)                 # host side, once
    plan = packing.plan(lengths, rows=4, width=96, prefix=prefix)        # None when packing saves nothing
    tokens, positions, mask, starts = packing.pack(batch_tokens, batch_lengths, plan)   # inside jit
    h = packing.gather(out.final_hidden, starts, resp_pos, plan)                         # (B, R, D)
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int


@dataclasses.dataclass(frozen=True)
class Packing:
    """Static packing shape: `rows` consecutive rows per packed row of `length` slots, the first `prefix`
    tokens of every row held once per group."""

    rows: int
    length: int
    prefix: int = 0

    def __post_init__(self):
        if self.rows < 1 or self.length < 1 or self.prefix < 0 or self.prefix >= self.length:
            raise ValueError(f"packing needs rows >= 1, length >= 1 and 0 <= prefix < length, got {self}")


def shared_prefix(tokens, lengths) -> int:
    """How many leading tokens every row has in common (host side), leaving each row at least one of its own.

    `tokens`: (N, T) rows or a list of token lists; `lengths`: each row's real tokens. Packing may hold
    that many once per group whatever rows a group gets, since every row starts with them.
    """
    rows = [np.asarray(r)[: int(n)] for r, n in zip(tokens, lengths)]
    if len(rows) < 2:
        return 0
    cap = min(len(r) for r in rows) - 1
    first = rows[0]
    n = 0
    while n < cap and all(r[n] == first[n] for r in rows[1:]):
        n += 1
    return n


def plan(lengths, rows: int, width: int, multiple: int = 16, min_saving: float = 0.1, prefix: int = 0) -> Packing | None:
    """The packing for rows of these real `lengths` (any `rows` of them may share a group, as after a shuffle).

    `length` = the `rows` longest lengths summed, less `(rows - 1) · prefix` (`shared_prefix`: held once per
    group), rounded up to `multiple`; None when that saves less than `min_saving` of the `rows · width`
    slots unpacked (or `rows` < 2).
    """
    lengths = np.sort(np.asarray(lengths, np.int64))[::-1]
    if rows < 2 or lengths.size < 2:
        return None
    if prefix and prefix >= int(lengths[-1]):
        raise ValueError(f"a shared prefix of {prefix} tokens leaves a row of {int(lengths[-1])} none of its own "
                         "(packing.shared_prefix keeps it shorter than every row)")
    need = int(lengths[:rows].sum()) - (min(rows, lengths.size) - 1) * prefix
    length = -(-need // multiple) * multiple
    if length > (1.0 - min_saving) * rows * width:
        return None
    return Packing(rows, length, prefix)


def pack(
    tokens: Int[Array, "b t"], lengths: Int[Array, " b"], p: Packing
) -> tuple[Int[Array, "g l"], Int[Array, "g l"], Bool[Array, "g 1 l l"], Int[Array, "g r"]]:
    """`(tokens, positions, mask, starts)` of the packed batch; row `g·rows + i`'s token at (unpacked) position
    `j >= p.prefix` sits in slot `starts[g, i] + j` (`gather` reads them back).

    Rows must fit: Σ lengths of each group less the shared prefixes <= `p.length` (`plan` guarantees it for
    the lengths it saw), and must all begin with the same `p.prefix` tokens (`shared_prefix`): a longer group
    would lose its last tokens silently, and each row's own first tokens would be read as row 0's.
    """
    b, t = tokens.shape
    if b % p.rows:
        raise ValueError(f"a batch of {b} rows does not split into packing groups of {p.rows}")
    g, pre = b // p.rows, p.prefix
    own = lengths.reshape(g, p.rows).astype(jnp.int32) - pre  # each row's tail past the shared prefix
    starts = pre + jnp.cumsum(own, axis=1) - own  # (g, rows): slot of each tail's first token
    slot = jnp.arange(p.length, dtype=jnp.int32)
    seg = jnp.maximum(jnp.sum(slot[None, :, None] >= starts[:, None, :], axis=-1) - 1, 0)  # prefix slots: row 0
    within = slot[None] - jnp.take_along_axis(starts, seg, axis=1)  # offset into the tail (< 0 in the prefix)
    real = (within < jnp.take_along_axis(own, seg, axis=1)) | (slot[None] < pre)
    position = jnp.where(real, within + pre, 0)
    flat = tokens.reshape(g, p.rows * t)
    packed = jnp.where(real, jnp.take_along_axis(flat, seg * t + position, axis=1), 0)  # padding slots: token 0
    segment = jnp.where(real, seg, -1)
    causal = slot[None, :] <= slot[:, None]
    shared = (slot < pre)[None, None, :]
    mask = ((segment[:, :, None] == segment[:, None, :]) | shared) & causal[None]
    return packed, position, mask[:, None], starts - pre


def gather(hidden: Array, starts: Int[Array, "g r"], positions: Int[Array, "b n"], p: Packing | None = None) -> Array:
    """`hidden (g, L, ...)` of a packed batch at unpacked row positions `(b, n)` -> `(b, n, ...)`; positions in the
    shared prefix (`p.prefix`) read its one copy."""
    g, rows = starts.shape
    b, n = positions.shape
    pos = positions.reshape(g, rows, n)
    idx = pos + starts[..., None]
    if p is not None and p.prefix:
        idx = jnp.where(pos < p.prefix, pos, idx)
    idx = idx.reshape(g, rows * n)
    idx = idx.reshape(idx.shape + (1,) * (hidden.ndim - 2))
    out = jnp.take_along_axis(hidden, idx, axis=1)
    return out.reshape((b, n) + hidden.shape[2:])
