"""One document-memory run end to end: documents → windows → cached activations → the shared loop → recall.

`train_run(config)` is what `launch/train_docmem.py` calls; `configs/docmem.py` documents every field.
Outputs in `<workdir>/`: `ckpt/` (Orbax), `adapter/` (the module tree + its config and the document keys),
`report.json` (`eval.evaluate`: recall with the own key, a wrong key, no key and the base model; CE with
negative keys; gate L0/L2; peak RSS),
`loss_curve.png`, `metrics.jsonl`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import resource
import shutil
import time
from pathlib import Path

import jax
import ml_collections
import numpy as np

from sycojax.adapters.export import load_tree, save_tree
from sycojax.data.documents import document_windows, load_documents_jsonl, wikipedia_documents
from sycojax.methods.docmem import eval as E
from sycojax.methods.docmem import loss as Lo
from sycojax.methods.docmem.module import NEGATIVE_KEYS, DocMemConfig, check_key_dim, document_keys, init_docmem
from sycojax.methods.shared import accumulate_cost, refuse_occupied_workdir
from sycojax.models.loading import load_model
from sycojax.models.tokenizer import load_tokenizer
from sycojax.objectives import GUIDANCE_FORMS
from sycojax.train import ArrayIterator, train

REPORT = "report.json"
ADAPTER = "adapter"


class DocMemError(ValueError):
    """A document-memory run that cannot go ahead; the message names the fix."""


def window_arrays(tok, windows, max_tokens: int) -> dict[str, np.ndarray]:
    rows = [[tok.bos_token_id, *tok(w.text, add_special_tokens=False)["input_ids"]][:max_tokens] for w in windows]
    t = max(len(r) for r in rows)
    tokens = np.zeros((len(rows), t), np.int32)
    valid = np.zeros((len(rows), t), bool)
    for i, r in enumerate(rows):
        tokens[i, : len(r)], valid[i, : len(r)] = r, True
    return {"tokens": tokens, "valid": valid, "weights": valid.astype(np.float32),
            "doc": np.asarray([w.doc for w in windows], np.int32)}


def documents(c: ml_collections.ConfigDict):
    """The run's documents (`data.documents_file`, else the first `data.num_documents` Wikipedia summaries) and
    their windows."""
    docs = (load_documents_jsonl(c.data.documents_file) if c.data.documents_file
            else wikipedia_documents(int(c.data.num_documents)))
    return docs, document_windows(docs, words=int(c.data.window_words), stride=int(c.data.stride),
                                  max_windows=int(c.data.max_windows))


def cached_windows(params, cfg, tok, windows, layer: int, max_tokens: int) -> dict[str, np.ndarray]:
    """The windows as token arrays plus `h`, the frozen stream leaving block `layer` (computed once)."""
    arrays = window_arrays(tok, windows, max_tokens)
    arrays["h"] = Lo.cache_after(params, arrays["tokens"], arrays["valid"], cfg=cfg, layer=layer)
    return arrays


def load_run(workdir: str | Path, *, model: str | None = None) -> dict:
    """A trained workdir ready to evaluate: `{cfg, params, tok, mc, layer, module, keys, docs, arrays, meta,
    report}`; a missing or foreign adapter, or `model` other than the one it was trained on, is a DocMemError."""
    d = Path(workdir)
    try:
        tree, meta = load_tree(d / ADAPTER)
    except (FileNotFoundError, ValueError) as e:
        raise DocMemError(f"{d} is not a document-memory workdir ({e}); train one with launch/train_docmem.py"
                          ) from None
    if meta.get("method") != "docmem":
        raise DocMemError(f"{d} holds a {meta.get('method', 'non-docmem')!r} adapter, not a document memory; "
                          "train one with launch/train_docmem.py")
    if model and model != meta["model"]:
        raise DocMemError(f"{d} was trained on {meta['model']!r}, not {model!r}; evaluate it with "
                          f"--model={meta['model']}")
    c = ml_collections.ConfigDict(meta["config"])
    cfg, params, info = load_model(meta["model"])
    if info.content_hash != meta["base_hash"]:
        raise DocMemError(f"{d} was trained on other weights of {meta['model']!r} ({meta['base_hash'][:19]}, these are "
                          f"{info.content_hash[:19]}); retrain it on these weights")
    docs, windows = documents(c)
    if [x.id for x in docs] != meta["documents"]:
        raise DocMemError(f"the documents {d} was trained on ({len(meta['documents'])}) are not those its config "
                          "loads now; give the same --config.data.documents_file")
    tok = load_tokenizer(meta["model"])
    mc = DocMemConfig(**meta["docmem"])
    report = json.loads((d / REPORT).read_text()) if (d / REPORT).is_file() else {}
    return {"cfg": cfg, "params": params, "tok": tok, "mc": mc, "layer": int(meta["hook_block"]),
            "module": tree["module"], "keys": np.asarray(tree["keys"]), "docs": docs, "meta": meta, "report": report,
            "arrays": cached_windows(params, cfg, tok, windows, int(meta["hook_block"]), int(c.data.max_tokens))}


def model_settings(c: ml_collections.ConfigDict, cfg, num_documents: int) -> tuple[int, DocMemConfig]:
    """The hooked block and the module's config from `config.method`, each bad value one clear error."""
    m = c.method
    hook = int(m.hook_block)
    if not -cfg.num_layers <= hook < cfg.num_layers:
        raise DocMemError(f"config.method.hook_block={hook}: the model has blocks 0..{cfg.num_layers - 1} "
                          f"(or -1..-{cfg.num_layers} from the top)")
    key_dim = int(m.key_dim) or num_documents
    try:
        check_key_dim(key_dim, num_documents)
        mc = DocMemConfig(d_model=cfg.hidden_size, memory_units=int(m.memory_units), key_dim=key_dim,
                          key_activation=m.key_activation, act=m.act, gate=m.gate, top_k=int(m.top_k))
    except ValueError as e:
        raise DocMemError(f"config.method: {e}") from None
    if m.negative_key not in NEGATIVE_KEYS or m.guidance_form not in GUIDANCE_FORMS:
        raise DocMemError(f"config.method.negative_key={m.negative_key!r} / guidance_form="
                          f"{m.guidance_form!r}: choose {', '.join(NEGATIVE_KEYS)} / {' or '.join(GUIDANCE_FORMS)}")
    if mc.gate == "topk" and m.negative_key == "zero":
        raise DocMemError("config.method.negative_key='zero' with the topk gate: a zero key IS the base model "
                          "there (nothing to learn from it); choose other or random")
    return hook % cfg.num_layers, mc


def train_run(c: ml_collections.ConfigDict, *, resume: bool = False, overwrite: bool = False, log=print) -> dict:
    t0 = time.perf_counter()
    workdir = Path(c.workdir or "checkpoints/docmem").resolve()
    refuse_occupied_workdir(workdir, resume, overwrite, DocMemError)
    docs, windows = documents(c)
    cfg, params, info = load_model(c.model.name)
    tok = load_tokenizer(c.model.name)
    layer, mc = model_settings(c, cfg, len(docs))
    arrays = cached_windows(params, cfg, tok, windows, layer, int(c.data.max_tokens))
    log(f"docmem: {len(docs)} documents -> {len(windows)} windows of <= {arrays['tokens'].shape[1]} tokens; "
        f"the output of block {layer} cached ({arrays['h'].nbytes / 1e6:.0f} MB)")
    if overwrite and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    chunk = int(c.data.get("chunk", 0)) if layer == cfg.num_layers - 1 else 0
    keys = document_keys(jax.random.key(int(c.method.key_seed)), len(docs), mc.key_dim)
    trainable = init_docmem(jax.random.key(int(c.train.seed)), mc)
    m = c.method
    loss_fn = Lo.make_loss_fn(cfg, mc, layer, negative=m.negative_key, tau=float(m.tau), alpha=float(m.alpha),
                              form=m.guidance_form, neg_positions=int(m.neg_positions), chunked=bool(chunk))
    meta = {"base_model": info.id, "base_hash": info.content_hash, "method": "docmem", "hook_block": layer,
            "docmem": dataclasses.asdict(mc), "documents": [d.id for d in docs]}
    rows = arrays
    if chunk:  # the last block's positions are independent: rows of `chunk` real positions, not padded windows
        rows = Lo.chunk_positions(arrays["h"], arrays["tokens"], arrays["weights"], arrays["doc"], chunk)
        log(f"docmem: {len(windows)} windows re-cut into {len(rows['doc'])} rows of {chunk} positions "
            f"({rows['weights'].mean():.0%} real, vs {arrays['weights'].mean():.0%} in padded windows)")
    c.train.batch_size = min(int(c.train.batch_size), len(rows["doc"]))
    epochs = int(c.data.get("epochs", 0))
    if epochs > 0:
        c.train.num_steps = math.ceil(epochs * len(rows["doc"]) / c.train.batch_size)
    result = train(loss_fn, trainable, {"base": params, "keys": keys},
                   ArrayIterator(rows, c.train.batch_size, seed=int(c.train.seed)), c,
                   str(workdir), metadata=meta, resume=resume)
    trainable = jax.device_get(result.trainable)
    t_train = time.perf_counter() - t0
    save_tree({"module": trainable, "keys": np.asarray(keys)}, workdir / ADAPTER,
              dict(meta, model=c.model.name, config=json.loads(c.to_json_best_effort())))
    report = E.evaluate(params, cfg, tok, trainable, mc, layer, np.asarray(keys), docs, arrays,
                        prompt_words=int(c.eval.prompt_words), new_tokens=int(c.eval.new_tokens))
    report.update(documents=len(docs), windows=len(windows), tokens=int(arrays["valid"].sum()), steps=result.step,
                  epochs=round(result.step * c.train.batch_size / len(rows["doc"]), 1), train_s=round(t_train, 1),
                  cost_s=accumulate_cost(workdir, {"train_s": t_train})["train_s"],
                  wall_s=round(time.perf_counter() - t0, 1), device=jax.devices()[0].device_kind,
                  peak_rss_gb=peak_rss_gb(), trainable_params=int(sum(x.size for x in jax.tree.leaves(trainable))),
                  gate=mc.gate, memory_units=mc.memory_units, top_k=mc.top_k, key_dim=mc.key_dim,
                  guidance_form=m.guidance_form, negative_key=m.negative_key, tau=float(m.tau),
                  outputs={"workdir": str(workdir), "adapter": str(workdir / ADAPTER),
                           "loss_curve": result.loss_curve, "metrics": result.metrics_path})
    (workdir / REPORT).write_text(json.dumps(report, indent=2))
    report["outputs"]["report"] = str(workdir / REPORT)
    return report


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, GB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
