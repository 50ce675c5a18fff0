"""One consolidation run end to end: queries → teacher targets → shared training loop → report.

`run(config)` is what `launch/consolidate.py` calls; `configs/consolidate.py` documents every field.
Outputs in `<workdir>/`: `ckpt/` (Orbax: trainable tree, optimizer, config, base id + hash),
`adapter/` (the final trainable tree as safetensors + JSON, read by `launch/chat.py`), `peft/` (LoRA
only: a PEFT adapter for transformers), `report.json`, `kl_curve.png`, `metrics.jsonl`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from sycojax.adapters import LoraConfig
from sycojax.adapters.export import export_peft, save_tree
from sycojax.eval.efficiency import peak_rss_mb
from sycojax.eval.plots import plot_curves
from sycojax.infer.generate import Sampling, generate
from sycojax.methods import sycomode as sm
from sycojax.models import Adapters
from sycojax.models.loading import load_model
from sycojax.models.tokenizer import chat_ids, load_tokenizer
from sycojax.train import ArrayIterator, train

REPORT = "report.json"


# --------------------------------------------------------------------------- inputs


def read_text(path: Path, what: str) -> str:
    """A file's text as UTF-8, or one line naming the first bad byte and the fix."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise sm.ConsolidationError(
            f"{what} {str(path)!r} is not UTF-8 text (byte 0x{data[e.start]:02x} at position {e.start}); "
            "save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def read_lines(path: str, what: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise sm.ConsolidationError(f"{what} {path!r} does not exist; give a text file with one query per line")
    lines = [ln.strip() for ln in read_text(p, what).splitlines() if ln.strip()]
    if not lines:
        raise sm.ConsolidationError(f"{what} {path!r} is empty; it needs one query per line")
    return lines


def read_context(context: str, context_file: str) -> str:
    if context and context_file:
        raise sm.ConsolidationError("give --context or --context_file, not both")
    if context_file:
        p = Path(context_file)
        if not p.is_file():
            raise sm.ConsolidationError(f"--context_file {context_file!r} does not exist")
        context = read_text(p, "--context_file")
    if not context or not context.strip():
        raise sm.ConsolidationError("the context is empty: pass --context='...' or --context_file=PATH with some text")
    return context.strip()


def sharegpt_queries(n: int, *, skip: int = 0, max_chars: int = 200) -> list[str]:
    """Short real first-turn user queries from ShareGPT (deterministic order)."""
    from sycojax.data import load_sharegpt_pairs  # noqa: PLC0415 - optional data package

    pairs = load_sharegpt_pairs()
    qs, seen = [], set()
    for p in pairs:
        q = p["instruction"].strip()
        if 10 <= len(q) <= max_chars and "\n" not in q and q.lower() not in seen:
            seen.add(q.lower())
            qs.append(q)
    rng = np.random.default_rng(1234)
    qs = [qs[i] for i in rng.permutation(len(qs))]
    if len(qs) < skip + n:
        raise sm.ConsolidationError(f"ShareGPT gave only {len(qs)} short queries; ask for fewer than {skip + n}")
    return qs[skip : skip + n]


def mtbench_queries(n: int) -> list[str]:
    from sycojax.data import mtbench_first_turns  # noqa: PLC0415

    return [r["instruction"] for r in mtbench_first_turns(reference_model=None)][:n]


def self_study_queries(params, cfg, tok, context: str, n: int, seed: int = 0, max_new_tokens: int = 48, *,
                       batch_size: int = 8, tries: int = 4, exclude: Sequence[str] = ()) -> list[str]:
    """Self-study: the model, shown the context, writes questions a user might ask (sampled, de-duplicated).

    Up to `tries` rounds of `batch_size` samples; the first line of each reply is a question, kept when it is
    new and not in `exclude` (e.g. the held-out queries). May return fewer than `n` when the model repeats itself.
    """
    ask = ("Here is a text:\n\n" + context[:2000] + "\n\nWrite one short question that a user might ask "
           "an assistant given this text. Reply with the question only.")
    prompt = chat_ids(tok, ask)
    out: list[str] = []
    taken = {q.lower() for q in exclude}
    for t in range(tries):
        if len(out) >= n:
            break
        g = generate(params, cfg, [prompt] * batch_size, max_new_tokens=max_new_tokens,
                     sampling=Sampling(1.0, 0.95), seed=seed + 97 * t)
        for row in g.rows():
            q = tok.decode(row, skip_special_tokens=True).strip().split("\n")[0].strip()
            if len(q) > 8 and q.lower() not in taken:
                taken.add(q.lower())
                out.append(q)
    return out[:n]


def eval_queries(d: ml_collections.ConfigDict) -> list[str]:
    """The held-out queries of config section `data`: `--eval_queries_file`, else MT-Bench or the ShareGPT
    queries after the training ones (disjoint by construction)."""
    if d.eval_queries_file:
        return read_lines(d.eval_queries_file, "--eval_queries_file")
    if d.eval_source == "mtbench":
        return mtbench_queries(d.num_eval_queries)
    skip = d.num_train_queries if (d.query_source == "sharegpt" and not d.queries_file) else 0
    return sharegpt_queries(d.num_eval_queries, skip=skip)


def get_queries(c: ml_collections.ConfigDict, params, cfg, tok, context: str) -> tuple[list[str], list[str]]:
    """(training queries, held-out queries), disjoint. Training: `--queries_file`, else `data.self_study_queries`
    questions the model writes about the context followed by `data.query_source` up to `data.num_train_queries`."""
    d = c.data
    eval_q = eval_queries(d)
    if d.queries_file:
        train_q = read_lines(d.queries_file, "--queries_file")
    elif d.query_source in ("sharegpt", "self_study"):
        n_self = d.num_train_queries if d.query_source == "self_study" else min(
            int(d.get("self_study_queries", 0)), d.num_train_queries)
        train_q = self_study_queries(params, cfg, tok, context, n_self, seed=c.train.seed, exclude=eval_q,
                                     tries=max(4, -(-2 * n_self // 8))) if n_self > 0 else []
        if d.query_source == "sharegpt":
            taken = set(train_q) | set(eval_q)
            pool = sharegpt_queries(d.num_train_queries)
            train_q += [q for q in pool if q not in taken][: d.num_train_queries - len(train_q)]
    else:
        raise sm.ConsolidationError(f"unknown data.query_source {d.query_source!r}; use sharegpt or self_study")
    overlap = set(train_q) & set(eval_q)
    if overlap:
        eval_q = [q for q in eval_q if q not in overlap]  # evaluation queries are always disjoint
    if not train_q or not eval_q:
        raise sm.ConsolidationError("no training or no evaluation queries left; give more queries")
    return train_q, eval_q


def spec_from_config(c: ml_collections.ConfigDict) -> sm.Spec:
    m = c.method
    targets = tuple(t.strip() for t in str(m.lora_targets).split(",") if t.strip())
    return sm.Spec(
        method=m.name, objective=m.objective,
        lora=LoraConfig(rank=m.lora_rank, alpha=float(m.lora_alpha), targets=targets),
        num_mem_tokens=m.num_mem_tokens, mem_init=m.mem_init, temperature=float(m.temp), topk=m.topk,
        topk_tail=bool(m.topk_tail),
        max_response_tokens=m.max_response_tokens,
        teacher_sampling=Sampling(float(m.teacher_temperature), float(m.teacher_top_p)),
        samples_per_query=m.samples_per_query, last_only=m.last_only,
    )


# --------------------------------------------------------------------------- presets

# What `--preset` sets (config keys, dotted); anything given on the command line wins. `quick` is the
# demo's budget (about 2 minutes on 2 CPU cores); `quality` follows the consolidation bench's sweeps
# (configs/consolidate_bench.py): self-study questions for the knowledge a context holds, more
# replies and steps, a cosine-decayed lr per method, sized to about 15 minutes per context on 2 cores.
PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "data.num_train_queries": 24, "data.self_study_queries": 0, "method.max_response_tokens": 48,
        "train.num_steps": 16, "train.batch_size": 4, "optim.schedule": "constant",
        "optim.lr": {"lora": 2e-3, "memory": 3e-2, "full": 3e-5},
        "train.eval_every": 4, "train.log_every": 2, "ckpt.every": 8,
    },
    "quality": {
        "data.num_train_queries": 96, "data.self_study_queries": 32, "method.max_response_tokens": 48,
        "train.num_steps": 128, "train.batch_size": 8, "optim.schedule": "cosine",
        "optim.lr": {"lora": 1e-3, "memory": 5e-2, "full": 5e-5},
        "train.eval_every": 16, "train.log_every": 8, "ckpt.every": 32,
    },
}
DEFAULT_PRESET = "quality"


def apply_preset(c: ml_collections.ConfigDict, name: str, *, keep: Sequence[str] = ()) -> list[str]:
    """Set `PRESETS[name]` on `c` (per-method values by `c.method.name`), except the dotted keys in `keep`
    (those given on the command line). Returns the keys it set."""
    if name not in PRESETS:
        raise sm.ConsolidationError(f"unknown --preset={name!r}; choose {' or '.join(PRESETS)}")
    done = []
    for key, value in PRESETS[name].items():
        if key in keep:
            continue
        section, field = key.split(".")
        if isinstance(value, dict):  # per method; method=hyper (a generated LoRA) reads lora's
            value = value[c.method.name if c.method.name in value else "lora"]
        setattr(getattr(c, section), field, value)
        done.append(key)
    c.preset = name
    return done


# --------------------------------------------------------------------------- workdir safety


def run_fingerprint(model_id: str, context: str, spec: sm.Spec) -> str:
    h = hashlib.sha256(json.dumps([model_id, context, spec.method, spec.n_mem, spec.lora.rank], default=str).encode())
    return h.hexdigest()[:16]


def check_workdir(workdir: Path, fingerprint: str, resume: bool, overwrite: bool) -> None:
    """Refuse to mix runs: a workdir holding another run's adapter is never overwritten silently."""
    report, adapter = workdir / REPORT, workdir / "adapter" / "adapter.json"
    ckpt = workdir / "ckpt"
    existing = None
    if adapter.exists():
        existing = json.loads(adapter.read_text()).get("fingerprint")
    has_run = adapter.exists() or report.exists() or (ckpt.exists() and any(ckpt.iterdir()))
    if not has_run or overwrite:
        return
    if existing is not None and existing != fingerprint:
        raise sm.ConsolidationError(
            f"--workdir {workdir} holds another run's adapter (different model, context or method); "
            "nothing was overwritten. Use a new --workdir, or pass --overwrite to replace it."
        )
    if not resume:
        raise sm.ConsolidationError(
            f"--workdir {workdir} already holds a run; pass --resume to continue it, --overwrite to replace it, "
            "or choose a new --workdir. Nothing was overwritten."
        )


# --------------------------------------------------------------------------- the run


def run(c: ml_collections.ConfigDict, *, resume: bool = False, overwrite: bool = False, log=print) -> dict[str, Any]:
    if c.method.name == "hyper":  # the LoRA from a trained generator, in one forward pass (issue 23)
        from sycojax.methods.hyperlora.use import consolidate_with_generator  # noqa: PLC0415

        return consolidate_with_generator(c, resume=resume, overwrite=overwrite, log=log)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        timings[name] = round(time.perf_counter() - t0, 2)
        return time.perf_counter()

    spec = spec_from_config(c)
    context = read_context(c.data.context, c.data.context_file)
    workdir = Path(c.workdir or os.path.join("checkpoints", "consolidate")).resolve()

    t0 = time.perf_counter()
    cfg, params, info = load_model(c.model.name)
    tok = load_tokenizer(c.model.name)
    fingerprint = run_fingerprint(info.id, context, spec)
    check_workdir(workdir, fingerprint, resume, overwrite)
    if overwrite and workdir.exists():
        import shutil  # noqa: PLC0415

        for sub in ("ckpt", "adapter", "peft", "tensorboard"):
            shutil.rmtree(workdir / sub, ignore_errors=True)
        for f in (REPORT, "metrics.jsonl"):
            (workdir / f).unlink(missing_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = lap("load", t0)

    train_q, eval_q = get_queries(c, params, cfg, tok, context)
    ctx_ids = tok(context, add_special_tokens=False)["input_ids"]
    log(f"context: {len(ctx_ids)} tokens · {len(train_q)} training queries · {len(eval_q)} held-out queries")

    # 1-2. teacher: responses and targets, once
    tr_prompts = sm.build_prompts(tok, cfg, context, train_q, spec.n_mem)
    ev_prompts = sm.build_prompts(tok, cfg, context, eval_q, spec.n_mem)
    sm.check_fits(cfg, tr_prompts, spec.max_response_tokens)
    sm.check_fits(cfg, ev_prompts, spec.max_response_tokens)
    if spec.objective == "causal_language_model":
        targets = sm.context_lm_targets(tok, cfg, context, spec)
    else:
        sampling = spec.teacher_sampling if spec.objective == "distill_on_generated_text" else Sampling()
        reps = spec.samples_per_query if spec.objective == "distill_on_generated_text" else 1
        rep_prompts = sm.Prompts(tr_prompts.teacher_prefix, tr_prompts.teacher_suffix * reps, tr_prompts.student * reps)
        responses = sm.teacher_responses(params, cfg, rep_prompts, max_new_tokens=spec.max_response_tokens,
                                         sampling=sampling, seed=c.train.seed)
        targets = sm.teacher_targets(params, cfg, rep_prompts, responses, topk=spec.topk, temperature=spec.temperature)
    ev_responses = sm.teacher_responses(params, cfg, ev_prompts, max_new_tokens=spec.max_response_tokens,
                                        desc="teacher eval responses")
    ev_targets = sm.teacher_targets(params, cfg, ev_prompts, ev_responses, topk=spec.topk, full=True,
                                    desc="teacher eval targets")
    t0 = lap("teacher", t0)

    baseline_targets = sm.strip_memory(ev_targets, spec.n_mem, cfg)
    kl_before = sm.mean_kl(params, Adapters(), cfg, baseline_targets)
    log(f"KL(teacher‖no-context model) on held-out responses: {kl_before:.4f} nats/token")
    t0 = lap("kl_before", t0)

    # 3. train with the shared loop
    trainable = sm.init_trainable(params, cfg, spec, jax.random.key(c.train.seed), ctx_ids)
    frozen = {} if spec.method == "full" else {"base": params}
    arrays = targets.train_arrays()
    bs = min(c.train.batch_size, arrays["tokens"].shape[0])
    c.train.batch_size = bs
    data = ArrayIterator(arrays, bs, seed=c.train.seed)
    # pack each device's micro-batch rows end to end when that saves >= 10% of the padded slots (same loss)
    packing = sm.loop_packing(targets, c, enabled=bool(c.method.get("pack", True)))
    if packing is not None:
        shared = f"; the {packing.prefix}-token prefix every row shares held once" if packing.prefix else ""
        log(f"packing {packing.rows} rows into {packing.length} tokens (unpacked: {packing.rows} x "
            f"{arrays['tokens'].shape[1]}{shared})")
    curve: list[tuple[int, float]] = [(0, kl_before)]

    def eval_fn(tr, step):
        p, a = sm.split_trees(frozen.get("base"), tr, spec)
        kl = sm.mean_kl(p, a, cfg, ev_targets)
        curve.append((int(step), kl))
        return {"heldout_kl": kl}

    metadata = {"base_model": info.id, "base_hash": info.content_hash, "method": spec.method,
                "fingerprint": fingerprint, "context_sha256": hashlib.sha256(context.encode()).hexdigest()}
    result = train(sm.make_loss_fn(cfg, spec, packing), trainable, frozen, data, c, str(workdir), metadata=metadata,
                   eval_fn=eval_fn, resume=resume)
    trainable = jax.device_get(result.trainable)
    t0 = lap("train", t0)

    p_s, a_s = sm.split_trees(params, trainable, spec)
    kl_after = sm.mean_kl(p_s, a_s, cfg, ev_targets)
    t0 = lap("kl_after", t0)
    samples = sm.side_by_side(params, trainable, cfg, spec, tok, context, eval_q[: c.eval.num_samples],
                              max_new_tokens=c.eval.sample_tokens)
    t0 = lap("samples", t0)

    # 4. save the trainable tree (+ how to rebuild the rest) and the PEFT export
    adapter_meta = dict(metadata, spec=dataclasses.asdict(spec), model=c.model.name, context=context,
                        config=json.loads(c.to_json_best_effort()))
    to_save = trainable if spec.method != "full" else {"base": trainable["base"]}
    save_tree(to_save, workdir / "adapter", adapter_meta)
    peft_dir = None
    if spec.method == "lora":
        peft_dir = export_peft(trainable["lora"], cfg, workdir / "peft", rank=spec.lora.rank, alpha=spec.lora.alpha,
                               base_model=info.id)
    curve_png = workdir / "kl_curve.png"
    plot_curves({f"{spec.method}": curve}, str(curve_png), title="held-out KL(teacher‖student)", ylabel="nats/token")
    lap("save", t0)

    teacher_len = np.mean([len(tr_prompts.teacher_prefix) + len(s) for s in ev_prompts.teacher_suffix])
    student_len = np.mean([len(s) for s in ev_prompts.student])
    report = {
        "model": c.model.name, "preset": c.get("preset", ""), "base_hash": info.content_hash, "method": spec.method,
        "objective": spec.objective,
        "context_tokens": len(ctx_ids), "num_train_queries": len(train_q), "num_eval_queries": len(eval_q),
        "train_examples": int(arrays["tokens"].shape[0]), "steps": result.step,
        "kl_before": kl_before, "kl_after": kl_after,
        "gap_closed": (kl_before - kl_after) / kl_before if kl_before else 0.0,
        "kl_curve": curve, "trainable_params": int(sum(x.size for x in jax.tree.leaves(trainable))),
        "trainable_bytes": sm.tree_bytes(trainable), "prefill_tokens_saved_per_query": float(teacher_len - student_len),
        "samples": samples, "timings_s": dict(timings, total=round(time.perf_counter() - t_start, 2)),
        "peak_rss_mb": round(peak_rss_mb(), 1),  # this process's high-water mark (load + teacher + training + eval)
        "outputs": {"workdir": str(workdir), "adapter": str(workdir / "adapter"),
                    "peft": str(peft_dir) if peft_dir else None,
                    "kl_curve": str(curve_png), "loss_curve": result.loss_curve, "metrics": result.metrics_path},
    }
    (workdir / REPORT).write_text(json.dumps(report, indent=2))
    report["outputs"]["report"] = str(workdir / REPORT)
    return report
