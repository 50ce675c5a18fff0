"""Each context's queries: its own written ones first, then self-study questions the model writes about a
knowledge context, then real ShareGPT first turns (training); its own questions, then MT-Bench and written
general ones (held out). The two sets never share a string.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import ml_collections

from sycojax.methods import sycomode as sm
from sycojax.methods.sycomode_bench.checks import BenchContext, Query

GENERAL_EVAL = (  # written for this benchmark
    "What is a good way to start learning to cook?",
    "Can you explain what a black hole is?",
    "Give me some advice for a job interview.",
    "Why do cats purr?",
)


MTBENCH_EVAL_IDS = (103, 159, 158, 144)  # short MT-Bench first turns (reasoning, humanities, stem)


@functools.lru_cache(maxsize=1)
def general_eval_queries() -> tuple[Query, ...]:
    """MT-Bench first turns (`MTBENCH_EVAL_IDS`) interleaved with the written `GENERAL_EVAL` queries."""
    from sycojax.data import mtbench_first_turns

    by_id = {int(r["source"].split(":")[1]): r["instruction"] for r in mtbench_first_turns(reference_model=None)}
    mt = [by_id[i] for i in MTBENCH_EVAL_IDS]
    out = []
    for a, b in zip(mt, GENERAL_EVAL):
        out += [Query(a), Query(b)]
    return tuple(out)


@functools.lru_cache(maxsize=4)
def sharegpt_pool(n: int) -> tuple[str, ...]:
    """`n` short real English first-turn queries from ShareGPT (deterministic)."""
    from sycojax.methods.consolidate import sharegpt_queries

    return tuple(sharegpt_queries(n, max_chars=160))


def queries_for(
    ctx: BenchContext,
    num_train: int,
    num_eval: int,
    general: Sequence[Query],
    pool: Sequence[str],
    self_study: Sequence[str] = (),
) -> tuple[list[str], list[Query]]:
    """(training queries, held-out queries) for one context: its own first, then `self_study`, then the pool.

    Raises when the two sets share a query (held-out means never trained on).
    """
    train_q = list(ctx.train_queries[:num_train])
    for q in [*self_study, *pool]:
        if len(train_q) >= num_train:
            break
        if q not in train_q:
            train_q.append(q)
    eval_q = list(ctx.eval_queries[:num_eval])
    eval_q += list(general)[: num_eval - len(eval_q)]
    shared = set(train_q) & {q.text for q in eval_q}
    if shared:
        raise sm.ConsolidationError(f"context {ctx.name}: training and held-out queries share {sorted(shared)}")
    if len(train_q) < num_train or len(eval_q) < num_eval:
        raise sm.ConsolidationError(
            f"context {ctx.name}: not enough queries ({len(train_q)} train, {len(eval_q)} eval)"
        )
    return train_q, eval_q


def _gen_batch(n: int, cap: int) -> int:
    return max(1, min(cap, n))


def self_study_for(params, cfg, tok, ctx: BenchContext, text: str, general: Sequence[Query],
                   s: ml_collections.ConfigDict, seed: int = 0) -> list[str]:
    """`bench.self_study_queries` questions the model writes about a `self_study` context (none for the others).

    Held-out queries (the context's and the general ones) are excluded, so the sets stay disjoint.
    """
    n = int(s.get("self_study_queries", 0))
    if not ctx.self_study or n <= 0:
        return []
    from sycojax.methods.consolidate import self_study_queries

    exclude = [q.text for q in (*ctx.eval_queries, *general)] + list(ctx.train_queries)
    return self_study_queries(params, cfg, tok, text, n, seed=seed, batch_size=_gen_batch(2 * n, s.gen_batch),
                              tries=max(4, -(-2 * n // max(int(s.gen_batch), 1)) + 2), exclude=exclude)
