"""How well can a kNN store reproduce one block's feed-forward? The store thresholds, measured without training.

    python launch/knn_fit_study.py --block=26 --rows=400 --json=results/knn_fit_study.json

Takes the FF inputs `x` of block `--block` on real text (the rows `launch/distill_knn.py` trains on) and the
original FF's outputs `FF(x)`; writes a featural store from the first tokens through `KNNStore.insert` (a
random orthogonal key projection, batches of 1,024 tokens) for each (merge_below, insert_above) pair, and scores
the kNN regression (top-k, softmax of scale x cosine) on 2,000 held-out tokens as the relative squared error
`|pred - FF(x)|² / |FF(x)|²` (1 = the FF removed). A least-squares linear map is the baseline.
"""

import json
import os
import time
from pathlib import Path

import _common
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from sycojax.methods.knn import distill as D
from sycojax.methods.knn import run as R
from sycojax.methods.knn.layers import KNNConfig
from sycojax.methods.knn.store import KNNStore, StoreSpec
from sycojax.models.loading import load_model
from sycojax.models.model import base_ffn, block_mlp
from sycojax.models.tokenizer import load_tokenizer

F = flags.FLAGS
flags.DEFINE_integer("block", 26, "the block whose FF the store samples")
flags.DEFINE_integer("rows", 400, "text rows (<= 128 tokens) to take FF samples from")
flags.DEFINE_integer("capacity", 32768, "store capacity")
flags.DEFINE_integer("key_dim", 128, "key size")
flags.DEFINE_integer("k", 16, "entries returned per query")
flags.DEFINE_float("scale", 16.0, "softmax scale over cosine similarities")
flags.DEFINE_string("thresholds", "0.6667:0.3333,0.2:0.1,0.05:0.02,0:0", "merge_below:insert_above pairs")
flags.DEFINE_string("rows_cache", os.path.join(_common.ROOT, "checkpoints", "knn", "train.npz"),
                    "a distill_knn.py workdir's cached rows (the stream entering --block) to read instead of "
                    "recomputing, when present and for the same block")
flags.DEFINE_string("json", os.path.join(_common.ROOT, "results", "knn_fit_study.json"), "JSON output")


def ffn_samples(block: int, n_rows: int):
    cfg, base, _ = load_model("smollm2-135m-instruct")
    tok = load_tokenizer("smollm2-135m-instruct")
    meta = os.path.splitext(F.rows_cache)[0] + ".json"
    if os.path.exists(F.rows_cache) and os.path.exists(meta) and json.loads(Path(meta).read_text())["start"] == block:
        with np.load(F.rows_cache) as f:
            arrays = {k: f[k][:n_rows] for k in ("h", "valid")}
        print(f"{len(arrays['h'])} rows read from {F.rows_cache}")
    else:
        data = ml_collections.ConfigDict({"sources": "wikipedia,sharegpt", "per_source": n_rows, "seed": 0})
        arrays = R.with_hidden(base, cfg, R.rows(tok, R.texts(data)[:n_rows], 128), block, print)
    layers = {block: KNNConfig("ablated", cfg.hidden_size)}
    grab = jax.jit(lambda h, v: D.logits_from(base, h, v, cfg=cfg, start=block, modules=D.student_modules({}, layers),
                                              ffn_inputs=True).ffn_inputs[block])
    xs = np.concatenate([np.asarray(grab(jnp.asarray(arrays["h"][i : i + 16]), jnp.asarray(arrays["valid"][i : i + 16])))
                         for i in range(0, n_rows, 16)])
    x = xs.reshape(-1, xs.shape[-1])[arrays["valid"].reshape(-1)]
    y = np.asarray(jax.jit(lambda x: base_ffn(block_mlp(base, cfg, block), x, cfg))(jnp.asarray(x)))
    return x, y


def knn_predict(store: KNNStore, q: np.ndarray, scale: float) -> np.ndarray:
    idx, _ = store.query(q)
    keys, values, _ = store.arrays()
    sim = np.einsum("nd,nkd->nk", q, keys[idx])
    sim = np.where(idx >= 0, sim, -np.inf)
    w = np.exp(scale * (sim - sim.max(1, keepdims=True)))
    w /= w.sum(1, keepdims=True)
    return np.einsum("nk,nkd->nd", w, values[idx])


def main(argv):
    del argv
    t0 = time.perf_counter()
    x, y = ffn_samples(F.block, F.rows)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(x))
    test, train = perm[:2000], perm[2000:]
    energy = float((y[test] ** 2).sum())
    proj, _ = np.linalg.qr(rng.normal(size=(x.shape[1], F.key_dim)))
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
    lin, *_ = np.linalg.lstsq(np.c_[x[train], np.ones(len(train))], y[train], rcond=None)
    out = {"block": F.block, "tokens": len(x), "train_tokens": len(train), "test_tokens": len(test),
           "key_dim": F.key_dim, "k": F.k, "scale": F.scale, "capacity": F.capacity,
           "linear_rel_err": float(((np.c_[x[test], np.ones(len(test))] @ lin - y[test]) ** 2).sum() / energy),
           "stores": []}
    print(f"{'merge_below':>11} {'insert_above':>12} {'entries':>8} {'recombined':>10} {'evicted':>8} {'rel err':>8}")
    for pair in F.thresholds.split(","):
        mb, ia = (float(v) for v in pair.split(":"))
        store = KNNStore(StoreSpec(key_dim=F.key_dim, value_dim=y.shape[1], capacity=F.capacity, k=F.k,
                                   owner=f"fit-study/block{F.block}", merge_below=mb, insert_above=ia))
        for i in range(0, len(train), 1024):
            rows = train[i : i + 1024]
            store.insert(x[rows] @ proj, y[rows], i // 1024 + 1)
        pred = knn_predict(store, unit(x[test] @ proj), F.scale)
        st = store.stats()
        row = {"merge_below": mb, "insert_above": ia, "entries": len(store), "recombinations": st["recombinations"],
               "evictions": st["evictions"], "rel_err": float(((pred - y[test]) ** 2).sum() / energy)}
        out["stores"].append(row)
        print(f"{mb:>11.4f} {ia:>12.4f} {row['entries']:>8} {row['recombinations']:>10} {row['evictions']:>8} "
              f"{row['rel_err']:>8.3f}")
    print(f"linear least squares: rel err {out['linear_rel_err']:.3f} (1 = the FF removed)")
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    with open(F.json, "w") as f:
        json.dump(out, f, indent=2)
    print(f"json:      {F.json}")


if __name__ == "__main__":
    app.run(main)
