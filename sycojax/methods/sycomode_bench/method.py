"""One method on one context: its `Spec` and loop config, the shared loop on the shared teacher targets
(memory tokens spliced in), held-out KL along the way, then greedy student replies and every metric.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from sycojax.adapters import LoraConfig, insert_after_bos
from sycojax.eval import (
    gap_closed,
    rouge_l,
)
from sycojax.infer.generate import Sampling, generate
from sycojax.methods import sycomode as sm
from sycojax.methods.shared import lora_targets
from sycojax.methods.sycomode import with_memory
from sycojax.methods.sycomode_bench.checks import TRANSFER_MIN, BenchContext, behaviour_transfer, pass_rate
from sycojax.methods.sycomode_bench.report import _fmt_rate
from sycojax.methods.sycomode_bench.teacher import TeacherData
from sycojax.models import Adapters, ModelConfig
from sycojax.train import ArrayIterator, train


def method_spec(method: str, m: ml_collections.ConfigDict, s: ml_collections.ConfigDict) -> sm.Spec:
    targets = lora_targets(m.get("lora_targets", "all"))
    return sm.Spec(
        method=method,
        objective="distill_on_generated_text",
        lora=LoraConfig(rank=int(m.get("lora_rank", 8)), alpha=float(m.get("lora_alpha", 16.0)), targets=targets),
        num_mem_tokens=int(m.get("num_mem_tokens", 8)),
        mem_init=str(m.get("mem_init", "context")),
        temperature=float(s.temperature),
        topk=int(s.topk),
        topk_tail=bool(s.get("topk_tail", False)),
        max_response_tokens=int(s.max_response_tokens),
        teacher_sampling=Sampling(float(s.teacher_temperature), float(s.teacher_top_p)),
        samples_per_query=int(s.samples_per_query),
    )


def train_config(base: ml_collections.ConfigDict, m: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The shared loop's config for one method: the bench's loop sections with the method's lr and steps."""
    c = ml_collections.ConfigDict({k: base[k].to_dict() for k in ("optim", "train", "ckpt", "mesh", "logging")})
    c.optim.lr = float(m.lr)
    c.train.num_steps = int(m.steps)
    if "batch_size" in m:
        c.train.batch_size = int(m.batch_size)
    return c


def load_hyper(m: ml_collections.ConfigDict, info) -> tuple[dict, Any]:
    """The `hyper` row's trained generator (`methods.hyper.hyper`: a launch/train_hyperlora.py workdir) and its
    HyperConfig, checked against the base model."""
    from sycojax.methods.hyperlora import HyperError  # noqa: PLC0415
    from sycojax.methods.hyperlora.use import load_generator  # noqa: PLC0415

    if not str(m.get("hyper", "") or ""):
        raise HyperError("--methods=hyper needs --config.methods.hyper.hyper=<workdir of launch/train_hyperlora.py>")
    gen, hc, _ = load_generator(m.hyper, info)
    return gen, hc


def _train(params, cfg: ModelConfig, tok, ctx: BenchContext, td: TeacherData, method: str, spec: sm.Spec,
           m: ml_collections.ConfigDict, c: ml_collections.ConfigDict) -> dict[str, Any]:
    """The shared loop on the shared teacher targets (memory tokens spliced in), held-out KL along the way."""
    s = c.bench
    train_t = with_memory(td.train_targets, spec.n_mem, cfg)
    eval_t = with_memory(td.eval_targets, spec.n_mem, cfg)
    ctx_ids = tok(td.context, add_special_tokens=False)["input_ids"]
    trainable = sm.init_trainable(params, cfg, spec, jax.random.key(int(c.train.seed)), ctx_ids)
    frozen = {} if method == "full" else {"base": params}
    tc = train_config(c, m)
    arrays = train_t.train_arrays()
    tc.train.batch_size = min(int(tc.train.batch_size), arrays["tokens"].shape[0])
    data = ArrayIterator(arrays, tc.train.batch_size, seed=int(c.train.seed))
    curve: list[tuple[int, float]] = [(0, td.kl_before)]

    def eval_fn(tr, step):
        p, a = sm.split_trees(frozen.get("base"), tr, spec)
        kl = sm.mean_kl(p, a, cfg, eval_t)
        curve.append((int(step), kl))
        return {"heldout_kl": kl}

    workdir = tempfile.mkdtemp(prefix=f"bench_{ctx.name}_{method}_", dir=c.bench.scratch_dir or None)
    try:
        result = train(
            sm.make_loss_fn(cfg, spec, sm.loop_packing(train_t, tc, enabled=bool(s.get("pack", True)))),
            trainable,
            frozen,
            data,
            tc,
            workdir,
            metadata={"bench": ctx.name, "method": method},
            eval_fn=eval_fn,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"trainable": jax.device_get(result.trainable), "curve": curve, "steps": int(result.step),
            "final_loss": next((h["loss"] for h in reversed(result.history) if "loss" in h), None)}


def _generated(params, cfg: ModelConfig, tok, td: TeacherData, hyper: tuple[dict, Any]) -> dict[str, Any]:
    """The `hyper` row: the context's LoRA from the trained generator in one forward pass (no training)."""
    from sycojax.methods.hyperlora.use import context_lora  # noqa: PLC0415

    gen, hc = hyper
    context_lora(gen, params, cfg, tok, td.context, hc)  # compiles this context's width
    lora, generate_s = context_lora(gen, params, cfg, tok, td.context, hc)
    trainable = {"lora": jax.device_get(lora)}
    kl = sm.mean_kl(params, Adapters(lora=trainable["lora"], lora_scale=hc.lora.scale), cfg, td.eval_targets)
    return {"trainable": trainable, "curve": [(0, td.kl_before), (0, kl)], "steps": 0, "final_loss": None,
            "generate_s": generate_s, "lora": hc.lora}


def run_method(
    params,
    cfg: ModelConfig,
    tok,
    ctx: BenchContext,
    td: TeacherData,
    method: str,
    m: ml_collections.ConfigDict,
    c: ml_collections.ConfigDict,
    log=print,
    hyper: tuple[dict, Any] | None = None,
) -> dict[str, Any]:
    """Consolidate `td.context` with one method on the shared teacher targets (`hyper`: the LoRA a trained
    generator emits, from `load_hyper`); metrics as the module says."""
    s = c.bench
    t0 = time.perf_counter()
    if method == "hyper":
        if hyper is None:
            raise ValueError("run_method(method='hyper') needs hyper=load_hyper(...)")
        run = _generated(params, cfg, tok, td, hyper)
        spec = dataclasses.replace(method_spec("lora", m, s), lora=run["lora"])
    else:
        spec = method_spec(method, m, s)
        run = _train(params, cfg, tok, ctx, td, method, spec, m, c)
    trainable, curve = run["trainable"], run["curve"]
    n_mem = spec.n_mem
    t_train = time.perf_counter() - t0
    kl_after = curve[-1][1]

    t1 = time.perf_counter()
    sp, sa = sm.student_params(params, trainable, cfg, spec)
    student_prompts = [insert_after_bos(p, cfg, n_mem) for p in td.eval_prompts.student]
    gen = generate(sp, cfg, student_prompts, max_new_tokens=s.max_response_tokens, adapters=sa)
    student_texts = [tok.decode(r, skip_special_tokens=True).strip() for r in gen.rows()]
    t_eval = time.perf_counter() - t1

    flags = {
        role: [ctx.behaviour(q, t) for q, t in zip(td.eval_queries, texts)]
        for role, texts in (("teacher", td.teacher_texts), ("student", student_texts), ("baseline", td.baseline_texts))
    }
    rates = {role: pass_rate(f) for role, f in flags.items()}
    transfer = behaviour_transfer(rates["teacher"], rates["student"], rates["baseline"])
    teacher_len = np.mean([len(td.eval_prompts.teacher_prefix) + len(x) for x in td.eval_prompts.teacher_suffix])
    student_len = np.mean([len(x) for x in student_prompts])
    out = {
        "kl_before": td.kl_before,
        "kl_after": kl_after,
        "gap_closed": gap_closed(td.kl_before, kl_after),
        "kl_curve": curve,
        "rouge_l_student": rouge_l(student_texts, td.teacher_texts),
        "rouge_l_baseline": rouge_l(td.baseline_texts, td.teacher_texts),
        "behaviour": {
            "teacher": rates["teacher"],
            "student": rates["student"],
            "baseline": rates["baseline"],
            "transfer": transfer,
            "ok": None if transfer is None else bool(transfer >= TRANSFER_MIN),
        },
        "prefill_tokens_saved_per_query": float(teacher_len - student_len),
        "train_s": round(t_train, 1),
        "eval_s": round(t_eval, 1),
        "wall_s": round(t_train + t_eval, 1),
        "trainable_params": int(sum(np.size(x) for x in jax.tree.leaves(trainable))),
        "trainable_bytes": sm.tree_bytes(trainable),
        "steps": run["steps"],
        "final_loss": run["final_loss"],
        "samples": [
            {"query": q.text, "teacher": t, "student": st, "baseline": b}
            for q, t, st, b in list(zip(td.eval_queries, td.teacher_texts, student_texts, td.baseline_texts))[
                : int(s.num_samples)
            ]
        ],
        "student_behaviour": flags["student"],
    }
    if "generate_s" in run:
        out["generate_s"] = round(run["generate_s"], 4)  # read + generate, compiled: the rest of train_s is the compile
    log(
        f"  {ctx.name:15s} {method:7s} KL {td.kl_before:.4f} -> {kl_after:.4f} "
        f"(gap closed {100 * out['gap_closed']:.1f}%)"
        f"  ROUGE-L {out['rouge_l_student']:.1f} vs {out['rouge_l_baseline']:.1f}  behaviour "
        f"{_fmt_rate(rates['teacher'])}/{_fmt_rate(rates['student'])}/{_fmt_rate(rates['baseline'])}  "
        f"{out['wall_s']:.0f}s"
    )
    return out
