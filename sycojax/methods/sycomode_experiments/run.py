"""The three experiments and their entry point `run_experiment` (launch/experiments.py), and `format_result`.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Any

import ml_collections
import numpy as np

from sycojax.methods import sycomode as sm
from sycojax.methods.sycomode_experiments.consolidation import (
    consolidate_raw,
    spec_from_config,
)
from sycojax.methods.sycomode_experiments.data import (
    FACTS,
    JAXA_ANSWER,
    JAXA_PASSAGE,
    JAXA_QUESTION,
    RawFormat,
    alphabet_case,
    encode,
    full_ids,
    plain_ids,
    probes_for,
)
from sycojax.methods.sycomode_experiments.eval import answer_perplexity, letter_ids, letter_prob, row_logits
from sycojax.models import ModelConfig


def _triple(full: float, none: float, cons: float, higher_is_better: bool) -> dict[str, Any]:
    better = cons > none if higher_is_better else cons < none
    return {
        "full_context": full,
        "no_context": none,
        "consolidated": cons,
        "consolidated_beats_no_context": bool(better),
    }


def qa_case(
    params,
    cfg: ModelConfig,
    tok,
    fmt: RawFormat,
    spec: sm.Spec,
    c: ml_collections.ConfigDict,
    context: str,
    question: str,
    answer: str,
    seed: int = 0,
) -> dict[str, Any]:
    """Experiments 2 and 3: answer perplexity with the context, without it, and consolidated."""
    ans = encode(tok, " " + answer)
    full_p = full_ids(tok, fmt, context, question)
    plain_p = plain_ids(tok, cfg, fmt, question)
    full = answer_perplexity(row_logits(params, None, cfg, full_p + ans), len(full_p), ans)
    none = answer_perplexity(row_logits(params, None, cfg, plain_p + ans), len(plain_p), ans)
    t0 = time.perf_counter()
    sp, sa = consolidate_raw(params, cfg, tok, fmt, context, probes_for(c, context), spec, c, seed)
    stud_p = plain_ids(tok, cfg, fmt, question, spec.n_mem)
    cons = answer_perplexity(row_logits(sp, sa, cfg, stud_p + ans), len(stud_p), ans)
    return dict(
        context=context,
        question=question,
        answer=answer,
        seconds=round(time.perf_counter() - t0, 1),
        **_triple(full, none, cons, higher_is_better=False),
    )


def experiment1(params, cfg, tok, fmt, spec, c, runs: int, seed: int = 0, log=print) -> dict[str, Any]:
    """Alphabet continuation: P(next letter | restricted to the 26 letters), mean ± std over `runs`."""
    letters = letter_ids(tok)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(runs):
        context, answer = alphabet_case(rng)
        full = letter_prob(row_logits(params, None, cfg, full_ids(tok, fmt, context, ""))[-1], letters, answer)
        none = letter_prob(row_logits(params, None, cfg, plain_ids(tok, cfg, fmt, ""))[-1], letters, answer)
        t0 = time.perf_counter()
        sp, sa = consolidate_raw(params, cfg, tok, fmt, context, [""], spec, c, seed + i)
        cons = letter_prob(row_logits(sp, sa, cfg, plain_ids(tok, cfg, fmt, "", spec.n_mem))[-1], letters, answer)
        rows.append(
            dict(
                context=context,
                answer=answer,
                full_context=full,
                no_context=none,
                consolidated=cons,
                seconds=round(time.perf_counter() - t0, 1),
            )
        )
        log(
            f"  run {i + 1}/{runs}: {context!r} -> {answer!r}: "
            f"full {full:.3f}  none {none:.3f}  consolidated {cons:.3f}"
        )
    out = {"metric": "P(correct letter | softmax over the 26 letter tokens)", "runs": runs, "per_run": rows}
    for k in ("full_context", "no_context", "consolidated"):
        vals = [r[k] for r in rows]
        out[k] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    out["consolidated_beats_no_context"] = out["consolidated"]["mean"] > out["no_context"]["mean"]
    return out


def experiment2(params, cfg, tok, fmt, spec, c, seed: int = 0, log=print) -> dict[str, Any]:
    """Three fact / question pairs: answer perplexity."""
    rows = []
    for i, (fact, q, a) in enumerate(FACTS):
        r = qa_case(params, cfg, tok, fmt, spec, c, fact, q, a, seed + i)
        log(
            f"  {fact!r} / {q!r} -> {a!r}: full {r['full_context']:.2f}  none {r['no_context']:.2f}  "
            f"consolidated {r['consolidated']:.2f}"
        )
        rows.append(r)
    out = {"metric": "perplexity of the answer tokens", "per_fact": rows}
    for k in ("full_context", "no_context", "consolidated"):
        out[k] = {"geometric_mean": float(np.exp(np.mean(np.log([r[k] for r in rows]))))}
    out["consolidated_beats_no_context"] = all(r["consolidated_beats_no_context"] for r in rows)
    return out


def experiment3(params, cfg, tok, fmt, spec, c, seed: int = 0, log=print) -> dict[str, Any]:
    """The JAXA passage: perplexity of "Epsilon" after "Which JAXA rocket replaced the M-V?"."""
    r = qa_case(params, cfg, tok, fmt, spec, c, JAXA_PASSAGE, JAXA_QUESTION, JAXA_ANSWER, seed)
    log(
        f"  {JAXA_QUESTION!r} -> {JAXA_ANSWER!r}: full {r['full_context']:.2f}  none {r['no_context']:.2f}  "
        f"consolidated {r['consolidated']:.2f}"
    )
    return {"metric": "perplexity of the answer tokens", **r}


def run_experiment(c: ml_collections.ConfigDict, experiment: int, log=print) -> dict[str, Any]:
    """Load the model, run one experiment, return its record (settings included)."""
    from sycojax.models.loading import load_model
    from sycojax.models.tokenizer import load_tokenizer

    if experiment not in (1, 2, 3):
        raise sm.ConsolidationError(f"--experiment must be 1, 2 or 3, got {experiment}")
    spec = spec_from_config(c)
    cfg, params, info = load_model(c.model.name)
    tok = load_tokenizer(c.model.name)
    fmt = RawFormat.for_model(tok, cfg, c.raw_start, c.answer_cue)
    t0 = time.perf_counter()
    seed = int(c.train.seed)
    if experiment == 1:
        if spec.objective != "causal_language_model":
            spec = dataclasses.replace(
                spec,
                max_response_tokens=int(c.method.alphabet_response_tokens),
                samples_per_query=int(c.method.alphabet_samples),
            )
        res = experiment1(params, cfg, tok, fmt, spec, c, int(c.runs), seed, log)
    elif experiment == 2:
        res = experiment2(params, cfg, tok, fmt, spec, c, seed, log)
    else:
        res = experiment3(params, cfg, tok, fmt, spec, c, seed, log)
    res.update(
        experiment=experiment,
        model=c.model.name,
        base_hash=info.content_hash,
        method=spec.method,
        objective=spec.objective,
        seconds=round(time.perf_counter() - t0, 1),
        settings={
            "method": c.method.to_dict(),
            "optim": c.optim.to_dict(),
            "train": c.train.to_dict(),
            "probes": c.probes.split("|"),
            "context_probes": c.context_probes,
            "raw_format": {"start_id": fmt.start, "answer_cue": fmt.cue},
        },
    )
    return res


def format_result(res: dict[str, Any]) -> str:
    """The three numbers (full context / no context / consolidated) as a small table."""
    n = res["experiment"]
    head = f"experiment {n} · method={res['method']} · objective={res['objective']} · {res['metric']}"
    lines = [head, f"{'':24s} {'full context':>14s} {'no context':>14s} {'consolidated':>14s}"]
    if n == 1:
        cells = [f"{res[k]['mean']:.3f} ± {res[k]['std']:.3f}" for k in ("full_context", "no_context", "consolidated")]
        lines.append(f"{'alphabet (' + str(res['runs']) + ' runs)':24s} " + " ".join(f"{x:>14s}" for x in cells))
    else:
        rows = res["per_fact"] if n == 2 else [res]
        for r in rows:
            label = r["answer"] if n == 2 else "JAXA → Epsilon"
            lines.append(f"{label:24s} {r['full_context']:14.2f} {r['no_context']:14.2f} {r['consolidated']:14.2f}")
    beats = res["consolidated_beats_no_context"]
    lines.append(f"consolidated beats no context: {'yes' if beats else 'NO'}")
    return "\n".join(lines)
