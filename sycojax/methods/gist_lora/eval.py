"""Scoring the patched model: teacher-forced loss of the references, ROUGE-L against the references, the
pos_control outputs of a gist eval and the teacher's outputs.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sycojax.data import GistExample
from sycojax.eval.rouge import rouge_l
from sycojax.methods.gist import mean_completion_loss
from sycojax.methods.gist_lora.spec import GistLoraError
from sycojax.methods.gist_lora.teacher import _bucket
from sycojax.models import Adapters


def _completion_loss(params, cfg, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], *,
                     gist_id: int, pad_id: int, batch_size: int, max_length: int) -> float | None:
    """Teacher-forced loss per completion token of `completions` after `prompts` (full causal attention)."""
    pairs = [(tuple(p), tuple(c)) for p, c in zip(prompts, completions) if c]
    if not pairs:
        return None
    examples = [GistExample(p, (), (), c) for p, c in pairs]
    length = _bucket(max(max_length, max(len(e.tokens) for e in examples)))
    return mean_completion_loss(params, Adapters(), cfg, examples, gist_id=gist_id, condition="pos_control",
                                length=length, pad_id=pad_id, batch_size=batch_size)


def pos_outputs_from_samples(samples: Mapping[str, Any] | str | os.PathLike,
                             condition: str = "pos_control") -> dict[str, dict[tuple[str, str], str]]:
    """`{split: {(instruction, input): output}}` of `condition` from a gist eval's `eval_samples.json`."""
    if not isinstance(samples, Mapping):
        path = Path(samples)
        if not path.is_file():
            raise GistLoraError(f"--samples_json {str(path)!r} does not exist (the gist eval writes eval_samples.json)")
        samples = json.loads(path.read_text())
    out: dict[str, dict[tuple[str, str], str]] = {}
    for split, rows in samples.items():
        for row in rows or ():
            if isinstance(row, Mapping) and isinstance(row.get(condition), str):
                out.setdefault(split, {})[(row["instruction"], row.get("input") or "")] = row[condition]
    return out


def _median(xs: Sequence[float]) -> float | None:
    return round(float(statistics.median(xs)), 2) if xs else None


def _mean(xs: Sequence[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def _metrics(preds: Sequence[str], records: Sequence[dict], *, pos: Mapping[tuple[str, str], str],
             teacher: Sequence[str] | None, loss: float | None) -> dict[str, Any]:
    ref = [i for i, r in enumerate(records) if r.get("output")]
    with_pos = [i for i, r in enumerate(records) if (r["instruction"], r.get("input") or "") in pos]
    return {
        "rougeL": rouge_l([preds[i] for i in ref], [records[i]["output"] for i in ref]) if ref else None,
        "rougeL_vs_pos": rouge_l([preds[i] for i in with_pos],
                                 [pos[(records[i]["instruction"], records[i].get("input") or "")] for i in with_pos])
        if with_pos else None,
        "n": len(records),
        "n_ref": len(ref),
        "loss": loss,
        "n_pos": len(with_pos),
        "rougeL_vs_teacher": rouge_l(list(preds), list(teacher)) if teacher is not None else None,
    }
