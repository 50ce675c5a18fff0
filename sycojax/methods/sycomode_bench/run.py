"""The bench's entry point `run_bench`: every selected context × method (launch/consolidate_bench.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from sycojax.methods.sycomode_bench.contexts import (
    context_text,
    default_contexts,
    select,
)
from sycojax.methods.sycomode_bench.method import load_hyper, run_method
from sycojax.methods.sycomode_bench.queries import (
    general_eval_queries,
    queries_for,
    self_study_for,
    sharegpt_pool,
)
from sycojax.methods.sycomode_bench.report import TARGETS, summarize
from sycojax.methods.sycomode_bench.teacher import teacher_data


def run_bench(c: ml_collections.ConfigDict, *, log=print, on_context: Callable[[dict], None] | None = None) -> dict:
    """Every selected context × method; `on_context(partial_result)` after each context (to save as you go)."""
    from sycojax.models.loading import load_model
    from sycojax.models.tokenizer import load_tokenizer

    s = c.bench
    contexts = default_contexts()
    names = select(s.contexts, contexts, "contexts")
    methods = select(s.methods, c.methods, "methods")
    t_start = time.perf_counter()
    cfg, params, info = load_model(c.model.name)
    tok = load_tokenizer(c.model.name)
    trains = any(m != "hyper" for m in methods)  # hyper only: no training replies, no self-study questions
    hyper = load_hyper(c.methods.hyper, info) if "hyper" in methods else None
    general = general_eval_queries()
    pool = sharegpt_pool(max(int(s.num_train_queries), 1))
    result: dict[str, Any] = {
        "model": c.model.name,
        "base_hash": info.content_hash,
        "device": f"{jax.default_backend()}: {jax.devices()[0].device_kind} x{jax.device_count()}",
        "settings": {
            "bench": s.to_dict(),
            "methods": {k: c.methods[k].to_dict() for k in methods},
            "train": {k: c[k].to_dict() for k in ("optim", "train")},
        },
        "targets": dict(TARGETS),
        "contexts": [],
    }
    for i, name in enumerate(names):
        ctx = contexts[name]
        text = context_text(ctx)
        ss = self_study_for(params, cfg, tok, ctx, text, general, s, seed=int(c.train.seed) + 101 * i) if trains else []
        train_q, eval_q = queries_for(ctx, int(s.num_train_queries), int(s.num_eval_queries), general, pool, ss)
        replies = f"{len(train_q)}×{s.samples_per_query} training replies" if trains else "nothing trains"
        log(
            f"[{i + 1}/{len(names)}] {name} ({ctx.kind}): {len(tok(text, add_special_tokens=False)['input_ids'])} "
            f"context tokens, {replies}, {len(eval_q)} held-out queries"
        )
        td = teacher_data(params, cfg, tok, text, train_q, eval_q, s, seed=int(c.train.seed) + 101 * i, train=trains)
        log(f"  teacher + baseline: {td.seconds:.0f}s, KL(teacher‖no context) = {td.kl_before:.4f}")
        rec = {
            "name": name,
            "kind": ctx.kind,
            "context": text,
            "check": ctx.check,
            "context_tokens": len(tok(text, add_special_tokens=False)["input_ids"]),
            "train_queries": train_q,
            "self_study_queries": len([q for q in ss if q in train_q]),
            "eval_queries": [q.text for q in eval_q],
            "train_examples": int(td.train_targets.tokens.shape[0]) if td.train_targets is not None else 0,
            "teacher_s": round(td.seconds, 1),
            "kl_before": td.kl_before,
            "methods": {},
        }
        for method in methods:
            rec["methods"][method] = run_method(params, cfg, tok, ctx, td, method, c.methods[method], c, log=log,
                                                hyper=hyper)
        result["contexts"].append(rec)
        result["summary"] = summarize(result["contexts"], methods)
        result["wall_s"] = round(time.perf_counter() - t_start, 1)
        if on_context is not None:
            on_context(result)
    return result
