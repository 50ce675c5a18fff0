"""Gisting's entry points, top to bottom: `train_run` (one condition through `sycojax.train.train`;
launch/train_gist.py) and `evaluate` (every run on the same examples; launch/eval_gist.py).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from sycojax.eval.rouge import rouge_l
from sycojax.methods.gist.data import build_train_data, encode_records, splits_from_config
from sycojax.methods.gist.efficiency import measure_efficiency
from sycojax.methods.gist.eval import _check_runs, full_prompt_generate, gist_generate
from sycojax.methods.gist.loss import make_loss_fn, mean_completion_loss
from sycojax.methods.gist.runs import REPORT, GistRun, check_resume, default_workdir, run_metadata
from sycojax.methods.gist.spec import EVAL_SPLITS, GistError, GistSpec, gist_token_id
from sycojax.methods.gist.trees import init_trainable, serving_trees, split_trees
from sycojax.methods.shared import padding_id
from sycojax.models.loading import load_model
from sycojax.models.tokenizer import load_tokenizer
from sycojax.train import ArrayIterator, train


def train_run(
    c: ml_collections.ConfigDict, *, resume: bool = False, model: tuple | None = None, tokenizer: Any = None,
    splits: Mapping[str, Sequence[dict]] | None = None, log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train one condition through `sycojax.train.train`; writes `<workdir>/report.json` and returns it.

    `model=(cfg, params, info)`, `tokenizer` and `splits` replace `load_model(c.model.name)`,
    `load_tokenizer(...)` and `alpaca_plus_splits(...)` (tests).
    """
    t_start = time.perf_counter()
    spec = GistSpec.from_config(c)
    if model is None:
        model = load_model(c.model.name)
    if tokenizer is None:
        tokenizer = load_tokenizer(c.model.name)
    cfg, params, info = model
    gid = gist_token_id(cfg, tokenizer)
    pad = padding_id(cfg, tokenizer)
    workdir = Path(c.workdir or default_workdir(spec)).resolve()
    metadata = run_metadata(info, spec)
    if resume:
        check_resume(workdir, metadata)
    splits = splits if splits is not None else splits_from_config(c.data)
    data = build_train_data(
        splits, tokenizer, spec, gid, pad_id=pad, drop_too_long=bool(c.data.drop_too_long),
        max_train_examples=int(c.data.max_train_examples), num_eval_examples=int(c.data.num_eval_examples),
    )
    n = data.arrays["tokens"].shape[0]
    log(f"gist run: condition={spec.condition} k={spec.num_gist_tokens} train_base={spec.train_base} fmt={spec.fmt}; "
        f"{n} training examples ({data.num_dropped} of {data.num_records} dropped: prompt longer than "
        f"max_length={spec.max_length}), {len(data.eval_examples)} held-out")
    if c.train.batch_size > n:
        raise GistError(f"train.batch_size={c.train.batch_size} exceeds the {n} training examples")

    trainable = init_trainable(params, cfg, spec, jax.random.key(int(c.train.seed)))
    frozen = {} if spec.train_base == "full" else {"base": params}
    curve: list[tuple[int, float]] = []

    def heldout_loss(tr) -> float:
        p, a = split_trees(frozen.get("base"), tr, spec)
        return mean_completion_loss(p, a, cfg, data.eval_examples, gist_id=gid, condition=spec.condition,
                                    length=spec.max_length, pad_id=pad, batch_size=int(c.train.batch_size))

    eval_fn = None
    if data.eval_examples:
        def eval_fn(tr, step):
            loss = heldout_loss(tr)
            curve.append((int(step), loss))
            return {"heldout_loss": loss}

        if not resume:
            curve.append((0, heldout_loss(trainable)))
            log(f"held-out completion loss before training: {curve[0][1]:.4f}")

    it = ArrayIterator(data.arrays, int(c.train.batch_size), seed=int(c.train.seed))
    result = train(make_loss_fn(cfg, spec, gid), trainable, frozen, it, c, str(workdir),
                   metadata=metadata, eval_fn=eval_fn, resume=resume)
    losses = [r["loss"] for r in result.history if "loss" in r]
    report = {
        "model": c.model.name, "base_hash": info.content_hash, "condition": spec.condition, "name": spec.name,
        "num_gist_tokens": spec.num_gist_tokens, "train_base": spec.train_base, "fmt": spec.fmt,
        "max_length": spec.max_length, "train_examples": int(n), "dropped_too_long": data.num_dropped,
        "steps": result.step, "final_train_loss": losses[-1] if losses else None, "heldout_loss_curve": curve,
        "trainable_params": int(sum(np.size(x) for x in jax.tree.leaves(result.trainable))),
        "compile": result.compile_stats, "time_s": round(time.perf_counter() - t_start, 1),
        "outputs": {"workdir": str(workdir), "ckpt": result.ckpt_dir, "metrics": result.metrics_path,
                    "loss_curve": result.loss_curve},
    }
    (workdir / REPORT).write_text(json.dumps(report, indent=2, default=str))
    report["outputs"]["report"] = str(workdir / REPORT)
    return report


def evaluate(
    runs: Sequence[GistRun],
    *,
    splits: Sequence[str] = ("seen", "unseen", "human"),
    num_examples: int = 100,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    max_length: int | None = None,
    efficiency: bool = True,
    efficiency_split: str = "human",
    timing_repeats: int = 3,
    model: tuple | None = None,
    tokenizer: Any = None,
    data_splits: Mapping[str, Sequence[dict]] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Greedy decoding + ROUGE-L + teacher-forced loss per split and condition; efficiency of the gist cache.

    Every condition sees the same examples: the first `num_examples` of each split whose prompt fits
    `max_length` (default: the first run's `data.max_length`) with the largest k among the runs.
    Returns `{"eval": {split: {condition: {"rougeL", "rougeL_vs_pos", "n", "n_ref", "loss"}}},
    "efficiency": {...} | None, "samples": {...}}`. `rougeL` is against the reference outputs (over the
    `n_ref` examples that have one; None when none has), `rougeL_vs_pos` against the pos_control run's
    outputs (None without a pos_control run), `loss` the teacher-forced loss per completion token on the
    references (None without references).
    """
    _check_runs(runs)
    if num_examples < 1:
        raise GistError(f"num_examples must be >= 1, got {num_examples}")
    unknown = [s for s in splits if s not in EVAL_SPLITS]
    if unknown or not splits:
        raise GistError(f"unknown split(s) {unknown or splits}; choose among {', '.join(EVAL_SPLITS)}")
    first = runs[0]
    if model is None:
        model = load_model(first.config["model"]["name"])
    if tokenizer is None:
        tokenizer = load_tokenizer(first.config["model"]["name"])
    cfg, base, info = model
    for r in runs:
        if r.metadata.get("base_hash") and r.metadata["base_hash"] != info.content_hash:
            raise GistError(f"{r.workdir} was trained on a base with hash {r.metadata['base_hash']}, but the model "
                            f"loads as {info.content_hash}; evaluate with the same base model")
    gid = gist_token_id(cfg, tokenizer)
    pad = padding_id(cfg, tokenizer)
    data_splits = data_splits if data_splits is not None else splits_from_config(first.config["data"])
    limit = int(max_length or first.spec.max_length)
    k_max = max(r.spec.num_gist_tokens for r in runs)
    probe = dataclasses.replace(first.spec, num_gist_tokens=k_max, max_length=max(limit, k_max + 2))

    # the examples every condition is scored on
    chosen: dict[str, list[dict]] = {}
    for split in splits:
        records = list(data_splits.get(EVAL_SPLITS[split]) or [])[:num_examples]
        if not records:
            raise GistError(f"split {split!r} ({EVAL_SPLITS[split]}) is empty; check the data sizes in the config")
        _, kept = encode_records(records, tokenizer, probe, gid, with_completion=False, max_length=limit)
        if not kept:
            raise GistError(f"no prompt of split {split!r} fits max_length={limit} with {k_max} gist token(s); "
                            "raise --max_length")
        chosen[split] = [records[i] for i in kept]
        log(f"{split}: {len(kept)} of {len(records)} examples fit max_length={limit}")

    dec = functools.partial(tokenizer.decode, skip_special_tokens=True)
    outputs: dict[str, dict[str, list[str]]] = {s: {} for s in splits}
    losses: dict[str, dict[str, float | None]] = {s: {} for s in splits}
    for run in runs:
        spec = run.spec
        params, adapters = serving_trees(base, run.trainable, cfg, spec)
        for split in splits:
            records = chosen[split]
            examples, _ = encode_records(records, tokenizer, spec, gid, with_completion=False, drop_too_long=False,
                                         max_length=limit)
            t0 = time.perf_counter()
            if spec.condition == "pos_control":
                ids = full_prompt_generate(params, adapters, cfg, examples, max_new_tokens=max_new_tokens,
                                           batch_size=batch_size)
            else:
                ids = gist_generate(params, adapters, cfg, examples, gist_id=gid,
                                    hide_gist=spec.condition == "neg_control",
                                    max_new_tokens=max_new_tokens, batch_size=batch_size)
            outputs[split][run.name] = [dec(x).strip() for x in ids]
            with_ref = [r for r in records if r.get("output")]
            loss = None
            if with_ref:
                ex_ref, _ = encode_records(with_ref, tokenizer, spec, gid, drop_too_long=False, max_length=limit)
                loss = mean_completion_loss(params, adapters, cfg, ex_ref, gist_id=gid, condition=spec.condition,
                                            length=limit, pad_id=pad, batch_size=batch_size)
            losses[split][run.name] = loss
            log(f"{split}/{run.name}: {len(records)} outputs in {time.perf_counter() - t0:.1f}s"
                + (f", loss {loss:.4f}" if loss is not None else ""))

    table: dict[str, dict[str, dict[str, Any]]] = {}
    pos = next((r.name for r in runs if r.spec.condition == "pos_control"), None)
    for split in splits:
        records = chosen[split]
        ref_idx = [i for i, r in enumerate(records) if r.get("output")]
        table[split] = {}
        for run in runs:
            preds = outputs[split][run.name]
            table[split][run.name] = {
                "rougeL": rouge_l([preds[i] for i in ref_idx],
                                  [records[i]["output"] for i in ref_idx]) if ref_idx else None,
                "rougeL_vs_pos": rouge_l(preds, outputs[split][pos]) if pos else None,
                "n": len(records),
                "n_ref": len(ref_idx),
                "loss": losses[split][run.name],
            }
    every = {
        split: [
            {"instruction": r["instruction"], "input": r["input"], "reference": r.get("output"),
             **{run.name: outputs[split][run.name][i] for run in runs}}
            for i, r in enumerate(chosen[split])
        ]
        for split in splits
    }
    samples = {split: rows[:3] for split, rows in every.items()}
    eff = None
    gist_runs = sorted((r for r in runs if r.spec.condition == "gist"), key=lambda r: r.spec.num_gist_tokens)
    if efficiency and gist_runs:
        eff_split = efficiency_split if efficiency_split in chosen else splits[0]
        eff = measure_efficiency(gist_runs[0], base, cfg, tokenizer, chosen[eff_split], gist_id=gid,
                                 max_new_tokens=max_new_tokens, batch_size=batch_size, max_length=limit,
                                 repeats=timing_repeats)
        eff["split"] = eff_split
    return {"eval": table, "efficiency": eff, "samples": samples, "outputs": every}
