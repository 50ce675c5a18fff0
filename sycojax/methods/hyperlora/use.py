"""Using a trained generator: its files (`save_generator` / `load_generator`, checked against the base model and
the LoRA asked for), one context -> its LoRA (`context_lora`, timed), and `consolidate_with_generator`: what
`launch/consolidate.py --method=hyper --hyper=<workdir>` runs, writing a workdir in `--method=lora`'s format
(`adapter/` read by launch/chat.py, `peft/`, `report.json`) in one forward pass instead of an optimisation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sycojax.adapters.export import export_peft, load_tree, save_tree
from sycojax.methods import sycomode as sm
from sycojax.methods.hyperlora.data import reader_ids
from sycojax.methods.hyperlora.generator import generate_lora
from sycojax.methods.hyperlora.reader import pool_context
from sycojax.methods.hyperlora.spec import HyperConfig, HyperError
from sycojax.models import Adapters

GENERATOR = "generator"  # <train workdir>/generator/: adapter.safetensors + adapter.json


def save_generator(gen: dict, directory: Path, *, hc: HyperConfig, model: str, info, extra: dict | None = None) -> Path:
    meta = {"base_model": info.id, "base_hash": info.content_hash, "model": model, "hyper": hc.to_dict(),
            **(extra or {})}
    return save_tree(jax.device_get(gen), directory, meta)


def load_generator(path: str | Path, info, *, rank: int | None = None) -> tuple[dict, HyperConfig, dict]:
    """The generator saved under `path` (a training workdir or its `generator/`), refused with one line when it
    was trained on another base model, or emits another LoRA rank than `rank` (when given)."""
    d = Path(path)
    if (d / GENERATOR).is_dir():
        d = d / GENERATOR
    if not (d / "adapter.json").is_file():
        raise HyperError(f"--hyper={path}: no trained generator there (expected {d}/adapter.json); train one with "
                         "launch/train_hyperlora.py and pass its --config.workdir")
    tree, meta = load_tree(d)
    if meta.get("base_hash") != info.content_hash:
        raise HyperError(f"--hyper={path}: this generator was trained for base model {meta.get('base_model')!r} "
                         f"({meta.get('base_hash')}), but this run loads {info.id!r} ({info.content_hash}); "
                         "train a generator for this model or pass --model to match")
    try:
        hc = HyperConfig.from_dict(meta["hyper"])
    except (KeyError, TypeError) as e:
        raise HyperError(f"--hyper={path}: {d}/adapter.json has no readable HyperConfig ({e})") from None
    if rank is not None and rank != hc.rank:
        raise HyperError(f"--hyper={path}: this generator emits rank-{hc.rank} LoRAs, not --lora_rank={rank}; "
                         f"drop --lora_rank or pass --lora_rank={hc.rank}")
    return jax.tree.map(jnp.asarray, tree), hc, meta


def pooled_context(params, cfg, tok, context: str, hc: HyperConfig, *, log=None, bucket: int = 64) -> jax.Array:
    """The reader's pooled states `(n, D)` of one context (cut to the reader's window, said through `log`);
    padded to a multiple of `bucket` tokens so a few compiled shapes serve every context."""
    ids = reader_ids(tok, cfg, context, hc.max_context_tokens, log=log)
    width = sm.bucket_length(len(ids), bucket)
    tokens = np.zeros((1, width), np.int32)
    valid = np.zeros((1, width), bool)
    tokens[0, : len(ids)], valid[0, : len(ids)] = ids, True
    return pool_context(params, jnp.asarray(tokens), jnp.asarray(valid), cfg, hc.depths(cfg))[0]


_generate = jax.jit(generate_lora, static_argnames="hc")


def context_lora(gen: dict, params, cfg, tok, context: str, hc: HyperConfig, *, log=None) -> tuple[dict, float]:
    """(the context's LoRA, seconds it took: read + generate, blocked until ready; includes any compile)."""
    t0 = time.perf_counter()
    lora = jax.block_until_ready(_generate(gen, pooled_context(params, cfg, tok, context, hc, log=log), hc))
    return lora, time.perf_counter() - t0


def consolidate_with_generator(c, *, resume: bool = False, overwrite: bool = False, log=print) -> dict[str, Any]:
    """`launch/consolidate.py --method=hyper --hyper=<workdir>`: the context's LoRA from the generator, saved as
    `--method=lora` saves its own; the held-out KL before/after on the same queries as a lora run."""
    from sycojax.eval.efficiency import peak_rss_mb  # noqa: PLC0415
    from sycojax.methods import consolidate as cs  # noqa: PLC0415
    from sycojax.models.loading import load_model  # noqa: PLC0415
    from sycojax.models.tokenizer import load_tokenizer  # noqa: PLC0415

    t_start = time.perf_counter()
    hyper = str(c.method.get("hyper", "") or "")
    if not hyper:
        raise HyperError("--method=hyper needs --hyper=<workdir of launch/train_hyperlora.py> (the trained generator)")
    context = cs.read_context(c.data.context, c.data.context_file)
    workdir = Path(c.workdir or "checkpoints/consolidate").resolve()
    cfg, params, info = load_model(c.model.name)
    params = jax.device_put(params)  # once, not into every jitted call
    tok = load_tokenizer(c.model.name)
    asked = int(c.method.get("lora_rank", 0) or 0)  # 0: the generator's (launch/consolidate.py without --lora_rank)
    gen, hc, _ = load_generator(hyper, info, rank=asked or None)
    spec = sm.Spec(method="lora", lora=hc.lora, max_response_tokens=int(c.method.max_response_tokens))
    fingerprint = cs.run_fingerprint(info.id, context, spec)
    cs.check_workdir(workdir, fingerprint, resume, overwrite)
    workdir.mkdir(parents=True, exist_ok=True)

    _, warm_s = context_lora(gen, params, cfg, tok, context, hc, log=log)  # compiles
    lora, generate_s = context_lora(gen, params, cfg, tok, context, hc)
    log(f"hyper: LoRA generated in {generate_s:.3f}s (first call, with compilation: {warm_s:.1f}s)")

    trainable = {"lora": jax.device_get(lora)}
    eval_q = cs.eval_queries(c.data)  # the queries a --method=lora run with these settings holds out
    prompts = sm.build_prompts(tok, cfg, context, eval_q)
    sm.check_fits(cfg, prompts, spec.max_response_tokens)
    responses = sm.teacher_responses(params, cfg, prompts, max_new_tokens=spec.max_response_tokens,
                                     desc="teacher eval responses")
    targets = sm.teacher_targets(params, cfg, prompts, responses, topk=spec.topk, full=True)
    kl_before = sm.mean_kl(params, Adapters(), cfg, targets)
    kl_after = sm.mean_kl(params, Adapters(lora=trainable["lora"], lora_scale=hc.lora.scale), cfg, targets)
    samples = sm.side_by_side(params, trainable, cfg, spec, tok, context, eval_q[: int(c.eval.num_samples)],
                              max_new_tokens=int(c.eval.sample_tokens))

    meta = {"base_model": info.id, "base_hash": info.content_hash, "method": "lora", "fingerprint": fingerprint,
            "context_sha256": hashlib.sha256(context.encode()).hexdigest(), "spec": dataclasses.asdict(spec),
            "model": c.model.name, "context": context, "generated_by": {"hyper": str(Path(hyper).resolve()),
                                                                       "hyper_config": hc.to_dict()}}
    save_tree(trainable, workdir / "adapter", meta)
    peft = export_peft(trainable["lora"], cfg, workdir / "peft", rank=hc.rank, alpha=hc.alpha, base_model=info.id)
    report = {"model": c.model.name, "method": "hyper", "base_hash": info.content_hash, "hyper": str(hyper),
              "context_tokens": len(tok(context, add_special_tokens=False)["input_ids"]),
              "num_train_queries": 0, "num_eval_queries": len(eval_q), "steps": 0,
              "kl_before": kl_before, "kl_after": kl_after,
              "gap_closed": (kl_before - kl_after) / kl_before if kl_before else 0.0, "generate_s": generate_s,
              "trainable_bytes": sm.tree_bytes(trainable), "samples": samples,
              "timings_s": {"generate": round(generate_s, 4), "total": round(time.perf_counter() - t_start, 2)},
              "peak_rss_mb": round(peak_rss_mb(), 1),
              "outputs": {"workdir": str(workdir), "adapter": str(workdir / "adapter"), "peft": str(peft),
                          "kl_curve": None, "loss_curve": None}}
    (workdir / cs.REPORT).write_text(json.dumps(report, indent=2))
    report["outputs"]["report"] = str(workdir / cs.REPORT)
    return report
