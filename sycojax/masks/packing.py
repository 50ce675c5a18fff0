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

    plan = packing.plan(lengths, rows=4, width=96)   # host side, once: None when packing saves nothing
    tokens, positions, mask, starts = packing.pack(batch_tokens, batch_lengths, plan)   # inside jit
    h = packing.gather(out.final_hidden, starts, resp_pos)                               # (B, R, D)
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Int


@dataclasses.dataclass(frozen=True)
class Packing:
    """Static packing shape: `rows` consecutive rows per packed row of `length` slots."""

    rows: int
    length: int

    def __post_init__(self):
        if self.rows < 1 or self.length < 1:
            raise ValueError(f"packing needs rows >= 1 and length >= 1, got {self}")


def plan(lengths, rows: int, width: int, multiple: int = 16, min_saving: float = 0.1) -> Packing | None:
    """The packing for rows of these real `lengths` (any `rows` of them may share a group, as after a shuffle).

    `length` = the `rows` longest lengths summed, rounded up to `multiple`; None when that saves less than
    `min_saving` of the `rows · width` slots unpacked (or `rows` < 2).
    """
    lengths = np.sort(np.asarray(lengths, np.int64))[::-1]
    if rows < 2 or lengths.size < 2:
        return None
    need = int(lengths[:rows].sum())
    length = -(-need // multiple) * multiple
    if length > (1.0 - min_saving) * rows * width:
        return None
    return Packing(rows, length)


def pack(
    tokens: Int[Array, "b t"], lengths: Int[Array, " b"], p: Packing
) -> tuple[Int[Array, "g l"], Int[Array, "g l"], Bool[Array, "g 1 l l"], Int[Array, "g r"]]:
    """`(tokens, positions, mask, starts)` of the packed batch; `starts[g, i]` = slot of row `g·rows + i`'s first token.

    Rows must fit: Σ lengths of each group <= `p.length` (`plan` guarantees it for the lengths it saw);
    a longer group would lose its last tokens silently.
    """
    b, t = tokens.shape
    if b % p.rows:
        raise ValueError(f"a batch of {b} rows does not split into packing groups of {p.rows}")
    g = b // p.rows
    lens = lengths.reshape(g, p.rows).astype(jnp.int32)
    starts = jnp.cumsum(lens, axis=1) - lens  # (g, rows)
    slot = jnp.arange(p.length, dtype=jnp.int32)
    seg = jnp.sum(slot[None, :, None] >= starts[:, None, :], axis=-1) - 1  # (g, L): last row starting at or before
    within = slot[None] - jnp.take_along_axis(starts, seg, axis=1)
    real = within < jnp.take_along_axis(lens, seg, axis=1)
    within = jnp.where(real, within, 0)
    flat = tokens.reshape(g, p.rows * t)
    packed = jnp.where(real, jnp.take_along_axis(flat, seg * t + within, axis=1), 0)  # padding slots: token 0
    segment = jnp.where(real, seg, -1)
    causal = slot[None, :] <= slot[:, None]
    mask = (segment[:, :, None] == segment[:, None, :]) & causal[None]
    return packed, within, mask[:, None], starts


def gather(hidden: Array, starts: Int[Array, "g r"], positions: Int[Array, "b n"]) -> Array:
    """`hidden (g, L, ...)` of a packed batch at unpacked row positions `(b, n)` -> `(b, n, ...)`."""
    g, rows = starts.shape
    b, n = positions.shape
    idx = (positions.reshape(g, rows, n) + starts[..., None]).reshape(g, rows * n)
    idx = idx.reshape(idx.shape + (1,) * (hidden.ndim - 2))
    out = jnp.take_along_axis(hidden, idx, axis=1)
    return out.reshape((b, n) + hidden.shape[2:])

