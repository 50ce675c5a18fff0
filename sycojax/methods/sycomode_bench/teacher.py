"""One context's teacher, once: sampled replies and top-k targets for training, greedy replies and full
distributions for the held-out queries, the no-context baseline's replies and `kl_before` (`TeacherData`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

import ml_collections

from sycojax.infer.generate import GREEDY, Sampling, generate
from sycojax.methods import sycomode as sm
from sycojax.methods.sycomode_bench.checks import Query
from sycojax.methods.sycomode_bench.queries import _gen_batch
from sycojax.models import Adapters, ModelConfig


@dataclasses.dataclass
class TeacherData:
    """Everything a method run needs from the teacher and the baseline, computed once per context."""

    context: str
    train_queries: list[str]
    eval_queries: list[Query]
    train_prompts: sm.Prompts
    eval_prompts: sm.Prompts
    train_targets: sm.Targets | None  # top-k, plain student positions (None: no method trains, `train=False`)
    eval_targets: sm.Targets  # full distributions, plain student positions
    teacher_texts: list[str]  # greedy teacher replies to the held-out queries
    baseline_texts: list[str]  # greedy replies of the base model without the context
    kl_before: float
    seconds: float


def teacher_data(
    params,
    cfg: ModelConfig,
    tok,
    context: str,
    train_q: Sequence[str],
    eval_q: Sequence[Query],
    s: ml_collections.ConfigDict,
    seed: int = 0,
    train: bool = True,
) -> TeacherData:
    """Teacher replies and targets (once), the baseline's replies and `kl_before` for one context; `train=False`
    (only generated LoRAs are benched, nothing trains) skips the training replies and targets."""
    t0 = time.perf_counter()
    eval_texts = [q.text for q in eval_q]
    tr = sm.build_prompts(tok, cfg, context, train_q, 0)
    ev = sm.build_prompts(tok, cfg, context, eval_texts, 0)
    sm.check_fits(cfg, tr, s.max_response_tokens)
    sm.check_fits(cfg, ev, s.max_response_tokens)
    train_t = _train_targets(params, cfg, tr, s, seed) if train else None
    ev_resp = sm.teacher_responses(
        params,
        cfg,
        ev,
        max_new_tokens=s.max_response_tokens,
        sampling=GREEDY,
        batch_size=_gen_batch(len(eval_texts), s.gen_batch),
        desc="teacher eval responses",
    )
    eval_t = sm.teacher_targets(params, cfg, ev, ev_resp, topk=s.topk, full=True, batch_size=s.target_batch)
    dec = functools.partial(tok.decode, skip_special_tokens=True)
    base = generate(params, cfg, ev.student, max_new_tokens=s.max_response_tokens)
    kl_before = sm.mean_kl(params, Adapters(), cfg, eval_t)
    return TeacherData(
        context,
        list(train_q),
        list(eval_q),
        tr,
        ev,
        train_t,
        eval_t,
        [dec(r).strip() for r in ev_resp],
        [dec(r).strip() for r in base.rows()],
        kl_before,
        time.perf_counter() - t0,
    )


def _train_targets(params, cfg: ModelConfig, tr: sm.Prompts, s: ml_collections.ConfigDict, seed: int) -> sm.Targets:
    """`bench.samples_per_query` sampled teacher replies per training query and their top-k targets."""
    reps = int(s.samples_per_query)
    rep = sm.Prompts(tr.teacher_prefix, tr.teacher_suffix * reps, tr.student * reps)
    sampling = Sampling(float(s.teacher_temperature), float(s.teacher_top_p))
    responses = sm.teacher_responses(
        params,
        cfg,
        rep,
        max_new_tokens=s.max_response_tokens,
        sampling=sampling,
        seed=seed,
        batch_size=_gen_batch(len(rep.student), s.gen_batch),
    )
    return sm.teacher_targets(
        params, cfg, rep, responses, topk=s.topk, temperature=s.temperature, batch_size=s.target_batch
    )
