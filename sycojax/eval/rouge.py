"""ROUGE-L through Google's `rouge-score` package, as the Gisting paper reports it.

Gisting (`jayelm/gisting`, `src/metrics.py`) strips both strings and calls Hugging Face
`evaluate`'s "rouge" (which wraps `rouge_score`) with `use_stemmer=True`, then reports
`rougeL × 100`. Here: the same scorer (rouge type `rougeL`, Porter stemming, the package's default
tokenizer: lowercase, non-alphanumeric characters become spaces), F-measure per pair, plain mean
× 100. `evaluate` reports a bootstrap "mid" estimate by default, which equals this mean up to
resampling noise.

Empty strings: `rouge_score` scores 0 whenever either side has no tokens. We keep that, except
that two empty strings (after stripping whitespace) count as a perfect match (1.0): a student
that stops where the teacher stops has reproduced it. Note that the default tokenizer drops
non-ASCII letters (é, ü, ...), so accented text is scored on its ASCII fragments.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from rouge_score import rouge_scorer


@functools.lru_cache(maxsize=1)
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_each(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure in [0, 1] for each (prediction, reference) pair."""
    if isinstance(predictions, str) or isinstance(references, str):
        raise TypeError("rouge_l takes lists of strings; wrap a single string as [text]")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    scores = []
    for pred, ref in zip(predictions, references, strict=True):
        pred, ref = pred.strip(), ref.strip()
        if not pred and not ref:
            scores.append(1.0)
        else:
            scores.append(_scorer().score(ref, pred)["rougeL"].fmeasure)
    return scores


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure × 100 (stemmed, as Gisting); see the module docstring."""
    scores = rouge_l_each(predictions, references)
    if not scores:
        raise ValueError("rouge_l needs at least one (prediction, reference) pair")
    return 100.0 * sum(scores) / len(scores)
