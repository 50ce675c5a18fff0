"""One HyperLoRA run end to end: real contexts → cached teacher targets → the generator through the shared loop →
held-out test contexts (hyper, controls, optimised) → results JSON + PNG.

`train_run(config)` is what `launch/train_hyperlora.py` calls; `configs/hyperlora.py` documents every field.
Outputs in `<workdir>/`: `data/` (the contexts, shared rows and cached targets), `ckpt/` (Orbax: the trained
entries of the generator, optimizer, data position), `generator/` (the whole generator + its HyperConfig and base
model, what `launch/consolidate.py --method=hyper --hyper=<workdir>` reads), `test_eval.json`, `optimised/`
(one consolidation workdir per test context), `report.json`, `gap_closed.png`, `metrics.jsonl`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sycojax.eval.efficiency import peak_rss_mb
from sycojax.methods.hyperlora import data as D
from sycojax.methods.hyperlora import eval as E
from sycojax.methods.hyperlora.generator import init_generator, set_reader_norm, split_trained
from sycojax.methods.hyperlora.loss import make_loss_fn, row_topk_kl
from sycojax.methods.hyperlora.spec import HyperConfig, HyperError
from sycojax.methods.hyperlora.use import GENERATOR, save_generator
from sycojax.methods.shared import accumulate_cost, fixed_batches, lora_targets, refuse_occupied_workdir
from sycojax.train import ArrayIterator, train

REPORT = "report.json"


def hyper_config(c: ml_collections.ConfigDict) -> HyperConfig:
    h = c.hyper
    layers = tuple(int(x) for x in str(h.read_layers).split(",") if x.strip())
    return HyperConfig(rank=int(h.rank), alpha=float(h.alpha), targets=lora_targets(h.targets), read_layers=layers,
                       hidden=int(h.hidden), basis=int(h.basis), max_context_tokens=int(h.max_context_tokens))


def queries(d: ml_collections.ConfigDict) -> tuple[list[str], list[str]]:
    """(the shared training pool, the held-out test queries): short real ShareGPT queries, disjoint."""
    from sycojax.methods.consolidate import sharegpt_queries  # noqa: PLC0415

    both = sharegpt_queries(int(d.pool_queries) + int(d.eval_queries), max_chars=int(d.query_max_chars))
    return both[: int(d.pool_queries)], both[int(d.pool_queries) :]


def prepare(c, params, cfg, tok, info, hc: HyperConfig, workdir: Path, *, pool: list[str], contexts=None,
            log=print) -> tuple[D.Dataset, dict]:
    """The dataset of every candidate context (before the KL filter), read back from `<workdir>/data` when it was
    made with the same settings; `contexts` (tests) replaces the real sources."""
    d = c.data
    key = {"base_hash": info.content_hash, "data": json.loads(d.to_json()), "topk": int(c.method.topk),
           "layers": list(hc.depths(cfg)), "pool": pool, "contexts": None if contexts is None else len(contexts)}
    t0 = time.perf_counter()
    data = D.Dataset.load(workdir / "data", key)
    if data is not None:
        log(f"hyper: {len(data)} contexts and their cached targets read from {workdir / 'data'}")
        return data, {"read_s": round(time.perf_counter() - t0, 1)}
    if contexts is None:
        contexts = D.real_contexts(tok, counts={k: int(v) for k, v in d.counts.items()},
                                   max_tokens=int(d.max_context_tokens), min_chars=int(d.min_chars), exclude=pool)
    log(f"hyper: {len(contexts)} candidate contexts ("
        + ", ".join(f"{k} {sum(x['kind'] == k for x in contexts)}" for k in D.KINDS) + ")")
    rows = D.query_rows(params, cfg, tok, pool, response_tokens=int(d.response_tokens), batch_size=8)
    t1 = time.perf_counter()
    data = D.teacher_pass(params, cfg, tok, contexts, rows, topk=int(c.method.topk), layers=hc.depths(cfg),
                          seed=int(d.seed), batch_size=int(d.teacher_batch), log=log)
    t2 = time.perf_counter()
    data.save(workdir / "data", key)
    cost = {"rows_s": round(t1 - t0, 1), "teacher_s": round(t2 - t1, 1),
            "teacher_s_per_context": round((t2 - t1) / len(contexts), 3)}
    log(f"hyper: shared rows {cost['rows_s']}s, teacher + reader on {len(contexts)} contexts {cost['teacher_s']}s")
    return data, cost


def topk_kl(gen: dict, base, cfg, hc: HyperConfig, ds: D.Dataset, pooled=None, batch: int = 16) -> np.ndarray:
    """Per context of `ds`: the KL on its cached row's top k (+ rest) with the LoRA generated from `pooled`
    (default: its own reader states)."""
    a = dict(ds.train_arrays(), pooled=ds.pooled if pooled is None else pooled)
    kl = np.zeros(len(ds), np.float32)
    for rows, n in fixed_batches(list(range(len(ds))), batch):
        out = row_topk_kl(gen, base, *(jnp.asarray(a[k][rows]) for k in
                                       ("pooled", "tokens", "resp_pos", "resp_weights", "topk_idx", "topk_logprobs")),
                          cfg=cfg, hc=hc)
        kl[rows[:n]] = np.asarray(out)[:n]
    return kl


def val_gap(gen: dict, base, cfg, hc: HyperConfig, val: D.Dataset) -> dict:
    """Validation contexts: mean KL on the cached top k (+ rest), and the gap closed (median, mean)."""
    kl = topk_kl(gen, base, cfg, hc, val)
    gap = 1.0 - kl / np.maximum(val.kl_before_topk, 1e-9)
    return {"kl_topk": float(kl.mean()), "gap_closed_median": float(np.median(gap)),
            "gap_closed_mean": float(gap.mean())}


def training_style_gaps(gen: dict, base, cfg, hc: HyperConfig, test: D.Dataset, wrong: np.ndarray) -> dict:
    """The test contexts on rows like the training ones (their cached row: a pool query + the base's reply,
    top-k KL): gap closed per context for hyper, unconditional (the generated part zeroed: A₀, B₀ alone) and
    wrong_context (fed `pooled[wrong]`)."""
    no_ctx = dict(gen, modules=jax.tree.map(jnp.zeros_like, gen["modules"]))
    kls = {"hyper": topk_kl(gen, base, cfg, hc, test), "unconditional": topk_kl(no_ctx, base, cfg, hc, test),
           "wrong_context": topk_kl(gen, base, cfg, hc, test, pooled=test.pooled[wrong])}
    return {k: 1.0 - v / np.maximum(test.kl_before_topk, 1e-9) for k, v in kls.items()}


def train_run(c: ml_collections.ConfigDict, *, resume: bool = False, overwrite: bool = False, log=print,
              consolidation: ml_collections.ConfigDict | None = None, contexts=None, model=None) -> dict:
    """The whole run (module docstring). `consolidation`: `configs/consolidate.py`'s config, for the optimised
    row (`c.eval.optimised` names the preset; "" skips it). `contexts` / `model` = (cfg, params, info, tok) let
    a test run on its own contexts and tiny model; the real run loads both."""
    from sycojax.models.loading import load_model  # noqa: PLC0415
    from sycojax.models.tokenizer import load_tokenizer  # noqa: PLC0415

    t_start = time.perf_counter()
    timings: dict = {}
    workdir = Path(c.workdir or "checkpoints/hyperlora").resolve()
    c.workdir = str(workdir)
    refuse_occupied_workdir(workdir, resume, overwrite, HyperError)
    hc = hyper_config(c)
    if model is None:
        cfg, params, info = load_model(c.model.name)
        tok = load_tokenizer(c.model.name)
    else:
        cfg, params, info, tok = model
    params = jax.device_put(params)  # once: a numpy tree would be copied into every jitted call (~0.5 GB here)
    hc.depths(cfg)  # the reader's depths exist in this model: refused here, before anything is deleted or written
    if overwrite and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    d = c.data
    pool, test_queries = (list(d.pool), list(d.test)) if len(d.pool) and len(d.test) else queries(d)

    # 1. data: every candidate's cached targets, the KL filter, the split by context
    everything, timings["data"] = prepare(c, params, cfg, tok, info, hc, workdir, pool=pool, contexts=contexts,
                                          log=log)
    data = D.keep_mattering(everything, float(d.min_kl))
    parts = D.split(len(data), n_test=int(d.n_test), n_val=int(d.n_val), seed=int(d.seed))
    train_set, val_set, test_set = (data.subset(parts[k]) for k in ("train", "val", "test"))
    log(f"hyper: {len(data)} of {len(everything)} contexts have KL_before >= {float(d.min_kl)} "
        f"(median {float(np.median(everything.kl_before)):.3f}); split by context: {len(train_set)} train, "
        f"{len(val_set)} validation, {len(test_set)} test")

    # 2. train the generator with the shared loop
    gen0 = set_reader_norm(init_generator(jax.random.key(int(c.train.seed)), cfg, hc), train_set.pooled)
    trainable, reader_norm = split_trained(gen0)
    frozen = {"base": params, "reader_norm": reader_norm}
    c.train.batch_size = min(int(c.train.batch_size), len(train_set))
    first = workdir / "val_step0.json"  # kept for a resumed run's curve
    if not first.is_file():
        first.write_text(json.dumps(val_gap(gen0, params, cfg, hc, val_set)))
    val0 = json.loads(first.read_text())
    log(f"hyper: validation at step 0: top-k KL {val0['kl_topk']:.4f}, gap closed median "
        f"{100 * val0['gap_closed_median']:.1f}%")

    def eval_fn(tr, step):
        r = val_gap(dict(tr, reader_norm=reader_norm), params, cfg, hc, val_set)
        log(f"hyper: validation at step {step}: top-k KL {r['kl_topk']:.4f}, gap closed median "
            f"{100 * r['gap_closed_median']:.1f}%")
        return r

    metadata = {"base_model": info.id, "base_hash": info.content_hash, "method": "hyperlora",
                "hyper": hc.to_dict(), "n_train_contexts": len(train_set)}
    t0 = time.perf_counter()
    result = train(make_loss_fn(cfg, hc, temperature=float(c.method.temperature), tail=bool(c.method.tail)),
                   trainable, frozen, ArrayIterator(train_set.train_arrays(), int(c.train.batch_size),
                                                    seed=int(c.train.seed)),
                   c, str(workdir), metadata=metadata, eval_fn=eval_fn, resume=resume)
    timings["train_s"] = round(time.perf_counter() - t0, 1)
    curve = [{"step": 0, **val0}] + [
        {"step": r["step"], **{k[5:]: v for k, v in r.items() if k.startswith("eval/")}}
        for r in map(json.loads, Path(result.metrics_path).read_text().splitlines()) if "eval/kl_topk" in r]
    gen = dict(jax.device_get(result.trainable), reader_norm=reader_norm)
    n_params = int(sum(x.size for x in jax.tree.leaves(result.trainable)))
    save_generator(gen, workdir / GENERATOR, hc=hc, model=c.model.name, info=info,
                   extra={"trainable_params": n_params, "steps": result.step})

    # 3. held-out test contexts: hyper and its controls, then the optimised LoRA on the same contexts
    t0 = time.perf_counter()
    records = E.evaluate_contexts(gen, params, cfg, tok, hc, test_set.contexts, test_queries,
                                  max_response_tokens=int(c.eval.max_response_tokens), seed=int(d.seed),
                                  cache=workdir / "test_eval.json", log=log)
    timings["test_eval_s"] = round(time.perf_counter() - t0, 1)
    style = training_style_gaps(gen, params, cfg, hc, test_set, E.derangement(len(test_set), int(d.seed)))
    for i, rec in enumerate(records):
        rec["training_style_gap_closed"] = {k: float(v[i]) for k, v in style.items()}
    log("hyper: test contexts on training-style rows (base reply, top-k KL), median gap closed: "
        + "  ".join(f"{k} {100 * float(np.median(v)):.1f}%" for k, v in style.items()))
    preset = str(c.eval.optimised or "")
    if preset and consolidation is not None:
        t0 = time.perf_counter()
        E.optimised(records, consolidation, preset, test_queries, workdir / "optimised",
                    limit=int(c.eval.optimised_limit), log=log)
        timings["optimised_s"] = round(time.perf_counter() - t0, 1)
    medians = E.summarize(records)
    subset = E.summarize_optimised_subset(records)
    plot = E.plot(records, workdir / "gap_closed.png",
                  title=f"HyperLoRA: KL gap closed on {len(records)} held-out test contexts")
    timings["total_s"] = round(time.perf_counter() - t_start, 1)
    cost = accumulate_cost(workdir, timings)

    results = {
        "test": medians,
        "n_test_contexts": len(records),
        "n_val_contexts": len(val_set),
        "n_train_contexts": len(train_set),
        "n_candidate_contexts": len(everything),
        "generate_s": float(np.median([r["generate_s"] for r in records])),
        "params": n_params,
        "per_context": records,
        "test_on_optimised_subset": subset,
        "test_training_style_rows": {k: float(np.median([r["training_style_gap_closed"][k] for r in records]))
                                     for k in ("hyper", "unconditional", "wrong_context")},
        "targets": {"hyper": 0.45, "above_unconditional": 0.15, "above_wrong_context": 0.20,
                    "share_of_optimised": 0.60},
        "met": met(medians, subset),
        "validation_curve": curve,
        "steps": result.step,
        "settings": {"model": c.model.name, "hyper": hc.to_dict(), "data": json.loads(d.to_json()),
                     "train": json.loads(c.train.to_json()), "optim": json.loads(c.optim.to_json()),
                     "eval": json.loads(c.eval.to_json()), "test_queries": test_queries,
                     "kinds": {k: sum(x["kind"] == k for x in train_set.contexts) for k in D.KINDS}},
        "timings_s": timings,  # this invocation's (a resumed run reads what it has cached)
        "cost_s": cost,  # every invocation on this workdir summed: what the whole run cost
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "device": jax.devices()[0].device_kind,
    }
    (workdir / REPORT).write_text(json.dumps(results, indent=2))
    outputs = {"workdir": str(workdir), "report": str(workdir / REPORT), "generator": str(workdir / GENERATOR),
               "plot": str(plot), "metrics": result.metrics_path}
    if c.results_json:
        out = Path(c.results_json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        outputs["results"] = str(out.resolve())
        if c.get("results_png"):
            shutil.copyfile(plot, c.results_png)
            outputs["results_png"] = str(Path(c.results_png).resolve())
    results["outputs"] = outputs
    return results


def met(m: dict, subset: dict | None = None) -> dict:
    """Which of issue 23's targets the medians meet (None where a row is missing); the share of the optimised
    LoRA is taken on the contexts it ran on (`subset`, when that is not all of them)."""
    h, u, w, o = (m.get(k) for k in E.ROWS)
    ho = subset["hyper"] if subset else h
    return {"hyper_ge_0.45": None if h is None else h >= 0.45,
            "above_unconditional_by_0.15": None if None in (h, u) else h - u >= 0.15,
            "above_wrong_context_by_0.20": None if None in (h, w) else h - w >= 0.20,
            "ge_60pct_of_optimised": None if None in (ho, o) or not o else ho >= 0.6 * o}
