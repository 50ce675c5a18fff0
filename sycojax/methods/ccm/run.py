"""One CCM training run end to end: dialogs → rows (split by conversation) → the shared loop → report.

`train_run(config)` is what `launch/train_ccm.py` calls; `configs/ccm.py` documents every field.
Outputs in `<workdir>/`: `ckpt/` (Orbax), `adapter/` (the COMP (+ SUM for merge_recur) + LoRA trees as safetensors,
with n_tok, attention type and LoRA shape in `adapter.json`, checked by `load_ccm`), `report.json`,
`loss_curve.png`, `metrics.jsonl`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sycojax.adapters import LoraConfig
from sycojax.adapters.export import load_tree, save_tree
from sycojax.methods.ccm import data as D
from sycojax.methods.ccm import loss as Lo
from sycojax.methods.ccm import trees
from sycojax.methods.shared import refuse_occupied_workdir
from sycojax.models.loading import load_model
from sycojax.models.tokenizer import load_tokenizer
from sycojax.objectives import row_nll
from sycojax.train import ArrayIterator, train

REPORT = "report.json"


class CCMError(ValueError):
    """A CCM run or checkpoint that cannot be used; the message names the fix."""


def spec_from_config(c: ml_collections.ConfigDict) -> trees.CCMSpec:
    m = c.method
    targets = tuple(t.strip() for t in str(m.lora_targets).split(",") if t.strip())
    try:
        return trees.CCMSpec(n_tok=int(m.n_tok), attn_type=m.attn_type, sink=bool(m.sink),
                             lora=LoraConfig(rank=int(m.lora_rank), alpha=float(m.lora_alpha), targets=targets))
    except ValueError as e:
        raise CCMError(str(e)) from None


def load_dialogs(c: ml_collections.ConfigDict) -> list[dict]:
    if c.data.source == "chitchat":
        from sycojax.data import load_chitchat_dialogs

        return load_chitchat_dialogs(min_turns=3)
    raise CCMError(f"unknown data.source {c.data.source!r}; use chitchat")


def make_rows(tok, cfg, spec, dialogs, c) -> tuple[list[D.Row], int]:
    """All rows of `dialogs` (every target turn), and how many targets did not fit `data.max_len`."""
    comp = trees.group_ids(cfg, spec)  # COMP×n (concat) or COMP×n SUM×n (merge) after every compressed turn
    rows, dropped = [], 0
    for d in dialogs:
        turns = D.turn_ids(tok, d, int(c.data.max_turn_tokens))
        got = D.dialog_rows(turns, comp, bos=tok.bos_token_id, sep=c.data.sep_id, eos=tok.eos_token_id,
                            max_len=int(c.data.max_len), gist=spec.gist)
        dropped += max(0, len(turns) - 2 - len(got))
        rows += got
    return rows, dropped


def _bucket(n: int, step: int = 32) -> int:
    return -(-n // step) * step


def eval_nll(params, trainable, cfg, spec, rows: list[D.Row], sep: int, batch: int = 8) -> dict[str, float]:
    """Mean per-row target NLL: CCM (from COMP memory), full context, no context (batched, jitted)."""
    comp = trees.group_ids(cfg, spec)
    variants = {"ccm": rows, "full": [D.without_comp(r, comp) for r in rows],
                "none": [D.without_context(r, sep) for r in rows]}
    res = {}
    for name, rs in variants.items():
        per_row = []
        for i in range(0, len(rs), batch):
            chunk = rs[i : i + batch]
            a = D.to_arrays(chunk + [chunk[-1]] * (batch - len(chunk)), _bucket(max(len(r.tokens) for r in chunk)), 0)
            nll = _row_nll(params, trainable if name == "ccm" else None, jnp.asarray(a["tokens"]),
                           jnp.asarray(a["valid"]), jnp.asarray(a["weights"]), cfg=cfg, spec=spec)
            per_row += list(np.asarray(nll)[: len(chunk)])
        res[name] = float(np.mean(per_row))
    gap = res["none"] - res["full"]
    res["gap_recovered"] = (res["none"] - res["ccm"]) / gap if gap > 0 else float("nan")
    return res


@functools.partial(jax.jit, static_argnames=("cfg", "spec"))
def _row_nll(params, trainable, tokens, valid, weights, *, cfg, spec):
    """Per-row mean NLL where `weights` is 1: under the CCM mask with `trainable`, else the plain base."""
    logits = Lo.logits_or_base(params, trainable, cfg, spec, tokens, valid)
    return row_nll(logits[:, :-1], tokens[:, 1:], weights[:, :-1])  # COMP ids are never targets (weight 0)


def train_run(c: ml_collections.ConfigDict, *, resume: bool = False, overwrite: bool = False, log=print) -> dict:
    t0 = time.perf_counter()
    spec = spec_from_config(c)
    workdir = Path(c.workdir or "checkpoints/ccm").resolve()
    refuse_occupied_workdir(workdir, resume, overwrite, CCMError)
    cfg, params, info = load_model(c.model.name)
    tok = load_tokenizer(c.model.name)
    c.data.sep_id = int(tok("\n", add_special_tokens=False)["input_ids"][-1])
    splits = D.split_conversations(load_dialogs(c), val=int(c.data.num_val), test=int(c.data.num_test),
                                   seed=int(c.data.seed))
    train_dialogs = splits["train"][: int(c.data.num_train)] if int(c.data.num_train) > 0 else splits["train"]
    rows, dropped = make_rows(tok, cfg, spec, train_dialogs, c)
    val_rows, _ = make_rows(tok, cfg, spec, splits["validation"], c)
    val_rows = [r for r in val_rows if r.context_turns >= int(c.eval.min_context_turns)][: int(c.eval.num_rows)]
    if not rows or not val_rows:
        raise CCMError("no training or validation rows: raise data.max_len or use longer conversations")
    arrays = D.to_arrays(rows, _bucket(max(len(r.tokens) for r in rows)), 0)
    log(f"ccm: {len(train_dialogs)} training conversations -> {len(rows)} rows of <= {arrays['tokens'].shape[1]} "
        f"tokens ({dropped} targets too long for max_len={c.data.max_len}, dropped); {len(val_rows)} validation rows")
    if overwrite and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    before = eval_nll(params, trees.init_trainable(params, cfg, spec, jax.random.key(c.train.seed)), cfg, spec,
                      val_rows, c.data.sep_id)
    log(f"validation NLL before training: ccm {before['ccm']:.3f}  full {before['full']:.3f}  none "
        f"{before['none']:.3f}")
    curve: list[tuple[int, float]] = []

    def eval_fn(tr, step):
        r = eval_nll(params, tr, cfg, spec, val_rows, c.data.sep_id)
        curve.append((int(step), r["ccm"]))
        return {"val_nll_ccm": r["ccm"], "val_gap_recovered": r["gap_recovered"]}

    trainable = trees.init_trainable(params, cfg, spec, jax.random.key(c.train.seed))
    meta = {"base_model": info.id, "base_hash": info.content_hash, "method": "ccm", "n_tok": spec.n_tok,
            "attn_type": spec.attn_type, "lora_rank": spec.lora.rank, "lora_alpha": spec.lora.alpha,
            "lora_targets": list(spec.lora.targets), "sink": spec.sink}
    c.train.batch_size = min(int(c.train.batch_size), len(rows))
    result = train(Lo.make_loss_fn(cfg, spec), trainable, {"base": params},
                   ArrayIterator(arrays, c.train.batch_size, seed=int(c.train.seed)), c,
                   str(workdir), metadata=meta, eval_fn=eval_fn, resume=resume)
    trainable = jax.device_get(result.trainable)
    after = eval_nll(params, trainable, cfg, spec, val_rows, c.data.sep_id)
    save_tree(trainable, workdir / "adapter", dict(meta, model=c.model.name, config=json.loads(c.to_json_best_effort())))
    report = {"model": c.model.name, "spec": dataclasses.asdict(spec), "train_conversations": len(train_dialogs),
              "train_rows": len(rows), "dropped_too_long": dropped, "row_length": int(arrays["tokens"].shape[1]),
              "steps": result.step, "val_rows": len(val_rows), "val_before": before, "val_after": after,
              "val_curve": curve, "wall_s": round(time.perf_counter() - t0, 1), "device": jax.devices()[0].device_kind,
              "outputs": {"workdir": str(workdir), "adapter": str(workdir / "adapter"),
                          "loss_curve": result.loss_curve, "metrics": result.metrics_path}}
    (workdir / REPORT).write_text(json.dumps(report, indent=2))
    report["outputs"]["report"] = str(workdir / REPORT)
    return report


def load_ccm(workdir: str | Path, cfg=None, *, n_tok: int | None = None, attn_type: str | None = None,
             flag: str = "--ccm") -> tuple[dict, trees.CCMSpec, dict]:
    """(trees, spec, adapter metadata) of a CCM workdir; refuses another method's workdir, a spec other than
    the one asked for, or (given `cfg`) trees that do not fit the model. Messages name the workdir as `flag`."""
    try:
        tree, meta = load_tree(Path(workdir) / "adapter")
    except FileNotFoundError:
        raise CCMError(f"{flag} {workdir}: no adapter/ in it; point at a launch/train_ccm.py workdir") from None
    if meta.get("method") != "ccm":
        raise CCMError(f"{flag} {workdir} holds a {meta.get('method', 'non-CCM')!r} adapter, not a CCM one; "
                       "point at a launch/train_ccm.py workdir")
    for name, want in (("n_tok", n_tok), ("attn_type", attn_type)):
        if want is not None and meta[name] != want:
            raise CCMError(f"{flag} {workdir} was trained with {name}={meta[name]!r}, not {want!r}; drop the flag "
                           "or train a model with it")
    try:
        spec = trees.CCMSpec(n_tok=int(meta["n_tok"]), attn_type=meta["attn_type"], sink=bool(meta.get("sink", False)),
                             lora=LoraConfig(rank=int(meta["lora_rank"]), alpha=float(meta["lora_alpha"]),
                                             targets=tuple(meta["lora_targets"])))
        trees.check_trees(tree, spec, cfg)
    except ValueError as e:
        raise CCMError(f"{flag} {workdir}: {e}") from None
    return jax.tree.map(jnp.asarray, tree), spec, meta
