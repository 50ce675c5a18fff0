"""Behaviour checks: whether a reply shows a context's behaviour (`BenchContext.behaviour`, `CHECKS`), pass
rates over replies, and how much of the teacher−baseline gap the student closes (`behaviour_transfer`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from sycojax.eval import (
    bullet_list,
    contains_phrase,
    is_all_caps,
    is_french,
    is_json,
    mentions_any,
)

TRANSFER_MIN = 0.5  # share of the teacher−baseline behaviour gap the student must close


def json_like(text: str) -> bool:
    """A JSON reply, allowing for truncation: parses as a JSON object/array (`is_json`), or starts like
    one (`{`, `[`, or a ```json fence). Replies are cut at `max_response_tokens`, so a complete object
    cannot be required of a long answer.
    """
    body = text.lstrip()
    return is_json(text) or body.startswith(("{", "[", "```json", "```JSON"))


def phrase_any(text: str, phrases: Sequence[str]) -> bool:
    """Some phrase of `phrases` occurs in `text` (`contains_phrase`: case, spaces and quotes ignored)."""
    return any(contains_phrase(text, p) for p in phrases)


CHECKS: dict[str, Callable[..., bool]] = {
    "mentions_any": lambda text, arg: mentions_any(text, arg),
    "phrase_any": lambda text, arg: phrase_any(text, arg),
    "is_french": lambda text, arg: is_french(text),
    "is_all_caps": lambda text, arg: is_all_caps(text),
    "json_like": lambda text, arg: json_like(text),
    "bullet_list": lambda text, arg: bullet_list(text),
}


@dataclasses.dataclass(frozen=True)
class Query:
    """A held-out query; `expect` (words, any of which counts) makes it checked by `mentions_any`."""

    text: str
    expect: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class BenchContext:
    """One context to consolidate, with its behaviour check and its own queries.

    check: a key of `CHECKS`, applied to every held-out reply (style contexts), or "per_query": only
    the context's own eval queries are checked, each with `mentions_any(reply, query.expect)` (facts,
    documents, identity). `train_queries` come first in the training set, then (when `self_study` and
    `bench.self_study_queries` > 0) questions the model writes about the context, then ShareGPT fills the
    rest; `eval_queries` come first in the held-out set (general queries fill the rest).
    """

    name: str
    kind: str
    text: str | Callable[[], str]  # or a loader, called on first use (data-backed contexts)
    check: str
    check_arg: tuple[str, ...] = ()
    train_queries: tuple[str, ...] = ()
    eval_queries: tuple[Query, ...] = ()
    self_study: bool = False  # knowledge contexts: generic queries cannot teach the facts, questions about them can

    def __post_init__(self):
        if self.check != "per_query" and self.check not in CHECKS:
            raise ValueError(
                f"context {self.name}: unknown check {self.check!r}; choose per_query or one of {sorted(CHECKS)}"
            )
        if self.check == "per_query" and not any(q.expect for q in self.eval_queries):
            raise ValueError(f"context {self.name}: check=per_query needs eval queries with expected words")

    def behaviour(self, query: Query, reply: str) -> bool | None:
        """Whether `reply` shows the context's behaviour; None when this query is not checked."""
        if self.check == "per_query":
            return mentions_any(reply, query.expect) if query.expect else None
        return bool(CHECKS[self.check](reply, self.check_arg))


def pass_rate(flags: Sequence[bool | None]) -> float | None:
    """Share of True among the checked replies (None entries skipped); None when nothing is checked."""
    checked = [f for f in flags if f is not None]
    return sum(checked) / len(checked) if checked else None


def behaviour_transfer(teacher: float | None, student: float | None, baseline: float | None) -> float | None:
    """`(student − baseline) / (teacher − baseline)`: 1 = the student behaves as often as the teacher,
    0 = no more than the model without the context. None when the teacher does not beat the baseline
    (the check sees no behaviour to transfer) or a rate is missing.
    """
    if teacher is None or student is None or baseline is None or teacher <= baseline:
        return None
    return (student - baseline) / (teacher - baseline)
