"""CCM training rows from multi-turn dialogs: every turn t >= 2 of a conversation is one target.

    [BOS] c1 C×n SEP c2 C×n SEP ... c(t-2) C×n SEP I(t) SEP O(t) EOS

`c_i` are the earlier turns (each compressed into the n COMP tokens after it), `I(t)` the turn before
the target and `O(t)` the target turn; the loss is on `O(t) EOS` only. Turns are written `A: ...` /
`B: ...` by speaker and clipped to `max_turn_tokens`; when a row would exceed `max_len` its oldest
context turns are dropped (never the input or output). Conversations are split train / validation /
test with a fixed seed BEFORE rows are made, so no conversation is in two splits.

`gist=True` lays the context out for the gist baseline, one group after the whole context:
`[BOS] c1 SEP c2 SEP ... c(t-2) C×n SEP I(t) SEP O(t) EOS`; `comp_ids=[]` gives the uncompressed row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from sycojax.data.sources import EmptyDatasetError


@dataclasses.dataclass(frozen=True)
class Row:
    tokens: list[int]
    loss_start: int  # first index of O(t): targets are tokens[loss_start:] (O(t) and EOS)
    context_turns: int


def split_conversations(dialogs: Sequence[dict], *, val: int, test: int, seed: int = 0) -> dict[str, list[dict]]:
    if len(dialogs) < val + test + 1:
        raise EmptyDatasetError(f"{len(dialogs)} conversations cannot give {val} validation + {test} test + training")
    order = np.random.default_rng(seed).permutation(len(dialogs))
    pick = lambda idx: [dialogs[i] for i in idx]  # noqa: E731
    return {"test": pick(order[:test]), "validation": pick(order[test : test + val]), "train": pick(order[test + val :])}


def turn_ids(tok, dialog: dict, max_turn_tokens: int) -> list[list[int]]:
    return [tok(f"{'AB'[i % 2]}: {text}", add_special_tokens=False)["input_ids"][:max_turn_tokens]
            for i, text in enumerate(dialog["turns"])]


def _context(ctx: Sequence[Sequence[int]], comp_ids: Sequence[int], sep: int, gist: bool) -> list[int]:
    """The context part of a row after BOS: every turn + its group + SEP, or (gist) the turns joined by SEP and
    one group at the end."""
    if gist:
        joined = [x for i, c in enumerate(ctx) for x in ([sep] if i else []) + list(c)]
        return [*joined, *comp_ids, sep] if ctx else []
    return [x for c in ctx for x in (*c, *comp_ids, sep)]


def dialog_rows(turns: Sequence[Sequence[int]], comp_ids: Sequence[int], *, bos: int, sep: int, eos: int,
                max_len: int, min_context: int = 1, gist: bool = False) -> list[Row]:
    """One row per target turn t (0-based) with at least `min_context` compressed turns before I(t)."""
    rows = []
    for t in range(min_context + 1, len(turns)):
        inp, out = list(turns[t - 1]), list(turns[t])
        ctx = [list(c) for c in turns[: t - 1]]
        tail = inp + [sep] + out + [eos]
        while ctx and 1 + len(_context(ctx, comp_ids, sep, gist)) + len(tail) > max_len:
            ctx.pop(0)
        head = [bos, *_context(ctx, comp_ids, sep, gist), *inp, sep]
        if len(ctx) < min_context or len(head) + len(out) + 1 > max_len:
            continue
        rows.append(Row(head + out + [eos], len(head), len(ctx)))
    return rows


def without_comp(row: Row, comp_ids: Sequence[int]) -> Row:
    """The same row with the COMP tokens removed: the full-context reference (plain causal attention)."""
    drop = set(comp_ids)
    n_before = sum(1 for x in row.tokens[: row.loss_start] if x in drop)
    return Row([x for x in row.tokens if x not in drop], row.loss_start - n_before, row.context_turns)


def without_context(row: Row, sep: int) -> Row:
    """`[BOS] I(t) SEP O(t) EOS`: the no-memory reference."""
    head = row.tokens[: row.loss_start - 1]  # up to I(t) (without its SEP)
    last_sep = max(i for i, x in enumerate(head) if x == sep) if sep in head else 0
    inp = head[last_sep + 1 :]
    tokens = [row.tokens[0], *inp, sep]
    return Row(tokens + row.tokens[row.loss_start :], len(tokens), 0)


def to_arrays(rows: Sequence[Row], length: int, pad: int) -> dict[str, np.ndarray]:
    """Right-padded `tokens`, `valid` and next-token `weights` (1 where the next token is in O(t) EOS)."""
    if not rows:
        raise EmptyDatasetError("no CCM rows: every conversation was too short or too long for max_len")
    tokens = np.full((len(rows), length), pad, np.int32)
    valid = np.zeros((len(rows), length), bool)
    weights = np.zeros((len(rows), length), np.float32)
    for i, r in enumerate(rows):
        n = len(r.tokens)
        if n > length:
            raise ValueError(f"row {i} has {n} tokens > length {length}")
        tokens[i, :n], valid[i, :n] = r.tokens, True
        weights[i, r.loss_start - 1 : n - 1] = 1.0  # position p predicts token p + 1
    return {"tokens": tokens, "valid": valid, "weights": weights}
