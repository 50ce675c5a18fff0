"""One document-memory run end to end: documents → windows → cached activations → the shared loop → recall.

`train_run(config)` is what `launch/train_docmem.py` calls; `configs/docmem.py` documents every field.
Outputs in `<workdir>/`: `ckpt/` (Orbax), `adapter/` (the module tree + its config and the document keys),
`report.json` (recall with the own key, a wrong key, no key and the base model; CE with negative keys),
`loss_curve.png`, `metrics.jsonl`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sycojax.adapters.export import save_tree
from sycojax.data.documents import document_windows, load_documents_jsonl, wikipedia_documents
from sycojax.methods.docmem import eval as E
from sycojax.methods.docmem import loss as Lo
from sycojax.methods.docmem.module import NEGATIVE_KEYS, DocMemConfig, document_keys, init_docmem, negative_keys
from sycojax.methods.shared import cache_hidden_rows, refuse_occupied_workdir
from sycojax.models.loading import load_model
from sycojax.models.tokenizer import load_tokenizer
from sycojax.objectives import GUIDANCE_FORMS
from sycojax.train import ArrayIterator, train

REPORT = "report.json"


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


def train_run(c: ml_collections.ConfigDict, *, resume: bool = False, overwrite: bool = False, log=print) -> dict:
    t0 = time.perf_counter()
    workdir = Path(c.workdir or "checkpoints/docmem").resolve()
    refuse_occupied_workdir(workdir, resume, overwrite, DocMemError)
    docs = (load_documents_jsonl(c.data.documents_file) if c.data.documents_file
            else wikipedia_documents(int(c.data.num_documents)))
    windows = document_windows(docs, words=int(c.data.window_words), stride=int(c.data.stride),
                               max_windows=int(c.data.max_windows))
    cfg, params, info = load_model(c.model.name)
    tok = load_tokenizer(c.model.name)
    layer = int(c.method.hook_block) % cfg.num_layers
    try:
        mc = DocMemConfig(d_model=cfg.hidden_size, memory_units=int(c.method.memory_units),
                          key_dim=int(c.method.key_dim), key_activation=c.method.key_activation, act=c.method.act)
    except ValueError as e:
        raise DocMemError(f"config.method: {e}") from None
    if c.method.negative_key not in NEGATIVE_KEYS or c.method.guidance_form not in GUIDANCE_FORMS:
        raise DocMemError(f"config.method.negative_key={c.method.negative_key!r} / guidance_form="
                          f"{c.method.guidance_form!r}: choose {', '.join(NEGATIVE_KEYS)} / {' or '.join(GUIDANCE_FORMS)}")
    arrays = window_arrays(tok, windows, int(c.data.max_tokens))
    arrays["h"] = cache_hidden_rows(params, arrays["tokens"], arrays["valid"], cfg=cfg, layer=layer)
    log(f"docmem: {len(docs)} documents -> {len(windows)} windows of <= {arrays['tokens'].shape[1]} tokens; "
        f"activations entering block {layer} cached ({arrays['h'].nbytes / 1e6:.0f} MB)")
    if overwrite and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    keys = document_keys(jax.random.key(int(c.method.key_seed)), len(docs), mc.key_dim)
    trainable = init_docmem(jax.random.key(int(c.train.seed)), mc)
    m = c.method
    loss_fn = Lo.make_loss_fn(cfg, mc, layer, negative=m.negative_key, tau=float(m.tau), alpha=float(m.alpha),
                              form=m.guidance_form)
    meta = {"base_model": info.id, "base_hash": info.content_hash, "method": "docmem", "hook_block": layer,
            "docmem": dataclasses.asdict(mc), "documents": [d.id for d in docs]}
    c.train.batch_size = min(int(c.train.batch_size), len(windows))
    result = train(loss_fn, trainable, {"base": params, "keys": keys},
                   ArrayIterator(arrays, c.train.batch_size, seed=int(c.train.seed)), c,
                   str(workdir), metadata=meta, resume=resume)
    trainable = jax.device_get(result.trainable)
    t_train = time.perf_counter() - t0
    report = evaluate(params, cfg, tok, trainable, mc, layer, keys, docs, arrays, c)
    save_tree({"module": trainable, "keys": np.asarray(keys)}, workdir / "adapter",
              dict(meta, model=c.model.name, config=json.loads(c.to_json_best_effort())))
    report.update(documents=len(docs), windows=len(windows), steps=result.step, train_s=round(t_train, 1),
                  wall_s=round(time.perf_counter() - t0, 1), device=jax.devices()[0].device_kind,
                  trainable_params=int(sum(x.size for x in jax.tree.leaves(trainable))),
                  outputs={"workdir": str(workdir), "adapter": str(workdir / "adapter"),
                           "loss_curve": result.loss_curve, "metrics": result.metrics_path})
    (workdir / REPORT).write_text(json.dumps(report, indent=2))
    report["outputs"]["report"] = str(workdir / REPORT)
    return report


def evaluate(params, cfg, tok, trainable, mc, layer, keys, docs, arrays, c) -> dict:
    """Recall of each document's first window from its first `prompt_words` words, four ways; CE with keys."""
    n_new, words = int(c.eval.new_tokens), int(c.eval.prompt_words)
    first = [int(np.flatnonzero(arrays["doc"] == d)[0]) for d in range(len(docs))]
    prompts, truths = [], []
    for d, doc in enumerate(docs):
        head = [tok.bos_token_id, *tok(" ".join(doc.text.split()[:words]), add_special_tokens=False)["input_ids"]]
        row = arrays["tokens"][first[d]][arrays["valid"][first[d]]].tolist()
        k = len(head) if row[: len(head)] == head else min(len(head), len(row) - 1)
        prompts.append(row[:k])
        truths.append(row[k : k + n_new])
    ids = np.arange(len(docs))
    wrong = np.asarray(negative_keys(jax.random.key(7), keys, jnp.asarray(ids), "other"))
    runs = {"own_key": {"module_params": trainable, "keys": np.asarray(keys)},
            "wrong_key": {"module_params": trainable, "keys": wrong},
            "no_key": {"module_params": trainable, "keys": None}, "base": {"module_params": None}}
    out = {}
    for name, kw in runs.items():
        gen = np.concatenate([E.greedy(params, cfg, prompts[i : i + 16], n_new, c=mc, layer=layer,
                                       **{k: (v[i : i + 16] if k == "keys" and v is not None else v) for k, v in kw.items()})
                              for i in range(0, len(prompts), 16)])
        out[name] = E.recall(tok, gen, truths)
    ce = {}
    for name, key_of in (("own", lambda d: keys[d]), ("other", lambda d: jnp.asarray(wrong)[d]),
                         ("zero", lambda d: jnp.zeros((len(d), mc.key_dim)))):
        vals = []
        for i in range(0, len(arrays["doc"]), 16):
            sl = slice(i, i + 16)
            d = jnp.asarray(arrays["doc"][sl])
            vals += list(np.asarray(Lo.window_nll(params, trainable, mc, cfg, layer, jnp.asarray(arrays["h"][sl]),
                                                  jnp.asarray(arrays["tokens"][sl]), jnp.asarray(arrays["valid"][sl]),
                                                  jnp.asarray(arrays["weights"][sl]), key_of(d))))
        ce[name] = float(np.mean(vals))
    return {"recall": out, "ce": ce, "tau": float(c.method.tau), "prompt_words": words, "new_tokens": n_new}
