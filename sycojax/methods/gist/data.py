"""Alpaca+ records → gisted token rows: `encode_records` (k `<GIST>` tokens after the instruction),
left-padded arrays for the loss (`batch_arrays`), the splits of a config and a run's training data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sycojax.data import (
    GistExample,
    PromptTooLongError,
    alpaca_plus_splits,
    chat_pieces,
    collate_gist_batch,
    encode_gist_example,
)
from sycojax.data.sources import require_nonempty
from sycojax.methods.gist.spec import GistSpec


def encode_records(
    records: Sequence[dict], tok: Any, spec: GistSpec, gist_id: int, *, with_completion: bool = True,
    drop_too_long: bool = True, max_length: int | None = None, num_gist_tokens: int | None = None,
) -> tuple[list[GistExample], list[int]]:
    """Encode records in `spec.fmt` with k gist tokens; returns `(examples, indices of the records kept)`.

    A prompt that leaves no room for a completion token within `max_length` (default `spec.max_length`) is
    dropped with `drop_too_long`, else raises `PromptTooLongError`; completions are cut on the right.
    """
    require_nonempty(records, "records to encode")
    k = spec.num_gist_tokens if num_gist_tokens is None else num_gist_tokens
    limit = spec.max_length if max_length is None else max_length
    chat = chat_pieces(tok) if spec.fmt == "chatml" else None
    out, kept = [], []
    for i, r in enumerate(records):
        try:
            ex = encode_gist_example(r, tok, gist_id=gist_id, num_gist_tokens=k, fmt=spec.fmt, chat=chat,
                                     with_completion=with_completion, max_length=limit)
        except PromptTooLongError:
            if not drop_too_long:
                raise
            continue
        if not with_completion and len(ex.prompt) >= limit:  # keep room for one generated token
            if not drop_too_long:
                raise PromptTooLongError(f"record {i}: prompt of {len(ex.prompt)} tokens fills max_length={limit}")
            continue
        out.append(ex)
        kept.append(i)
    return out, kept


def batch_arrays(examples: Sequence[GistExample], *, pad_id: int, length: int) -> dict[str, np.ndarray]:
    """Left-padded arrays for `ArrayIterator` / the loss: tokens, labels, valid (B, length), num_tokens (B,)."""
    b = collate_gist_batch(examples, pad_id=pad_id, length=length)
    return {"tokens": b["tokens"], "labels": b["labels"], "valid": b["valid"],
            "num_tokens": b["valid"].sum(1).astype(np.int32)}


def splits_from_config(d: Mapping[str, Any]) -> dict[str, list[dict]]:
    """`alpaca_plus_splits` with the sizes and seed of a config's `data` section."""
    return alpaca_plus_splits(
        seed=int(d["seed"]), n_val_unseen=int(d["n_val_unseen"]), n_val_seen_per_task=int(d["n_val_seen_per_task"]),
        n_train_seen_per_task=None if int(d["n_train_seen_per_task"]) < 0 else int(d["n_train_seen_per_task"]),
    )


@dataclasses.dataclass
class TrainData:
    arrays: dict[str, np.ndarray]  # for ArrayIterator
    eval_examples: list[GistExample]  # held-out (val_unseen) examples for the loss during training
    num_records: int
    num_dropped: int


def build_train_data(
    splits: Mapping[str, Sequence[dict]], tok: Any, spec: GistSpec, gist_id: int, *, pad_id: int,
    drop_too_long: bool = True, max_train_examples: int = 0, num_eval_examples: int = 32,
) -> TrainData:
    """Encode the train split (prompts that do not fit `spec.max_length` dropped or an error) into fixed-shape
    arrays, plus the first `num_eval_examples` val_unseen examples for a held-out loss."""
    train = list(splits.get("train") or [])
    require_nonempty(train, "Alpaca+ split 'train'", "check the data sizes in the config")
    if max_train_examples > 0:
        train = train[:max_train_examples]
    examples, kept = encode_records(train, tok, spec, gist_id, drop_too_long=drop_too_long)
    if not examples:
        raise PromptTooLongError(
            f"none of the {len(train)} training prompts leaves room for {spec.num_gist_tokens} gist token(s) and a "
            f"completion within data.max_length={spec.max_length}; raise --config.data.max_length"
        )
    arrays = batch_arrays(examples, pad_id=pad_id, length=spec.max_length)
    heldout = [r for r in (splits.get("val_unseen") or []) if r.get("output")][: max(num_eval_examples, 0)]
    eval_examples = encode_records(heldout, tok, spec, gist_id)[0] if heldout else []
    return TrainData(arrays, eval_examples, len(train), len(train) - len(kept))
