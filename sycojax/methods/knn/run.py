"""One kNN-distillation run end to end: real text → cached activations → each variant through the shared loop → eval.

`train_run(config)` is what `launch/distill_knn.py` calls; `configs/knn.py` documents every field. The original
(`teacher`) and the FF-removed model (`ablated`) are scored once; each trained variant (`featural`,
`associative`, `product_key`) trains in `<workdir>/<variant>/` (Orbax checkpoints, `store<b>.sqlite` per
replaced block, metrics) and is scored on the same held-out rows. Outputs: `<workdir>/report.json`, the
results JSON (`results_json`), `kl_curve.png` (held-out KL vs step per variant).
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sycojax.data.sharegpt import load_sharegpt_pairs
from sycojax.data.sources import require_nonempty
from sycojax.data.wikipedia import load_wikipedia_summaries
from sycojax.eval.efficiency import peak_rss_mb
from sycojax.methods.knn import distill as D
from sycojax.methods.knn.layers import KNNConfig, init_knn
from sycojax.methods.knn.store import KNNStore, StoreError, StoreSpec
from sycojax.methods.shared import cache_hidden_rows, refuse_occupied_workdir
from sycojax.models.loading import load_model
from sycojax.models.tokenizer import load_tokenizer
from sycojax.train import ArrayIterator, train

REPORT = "report.json"
TRAINED = ("featural", "associative", "product_key")


class KNNError(ValueError):
    """A kNN-distillation run that cannot go ahead; the message names the fix."""


def parse_blocks(text, num_layers: int) -> tuple[int, ...]:
    try:
        blocks = sorted({int(b) % num_layers if int(b) < 0 else int(b) for b in str(text).split(",") if b.strip()})
    except ValueError:
        raise KNNError(f"config.method.blocks={text!r}: give block indices like 12,13") from None
    bad = [b for b in blocks if not 0 <= b < num_layers]
    if not blocks or bad:
        raise KNNError(f"config.method.blocks={text!r}: the model has blocks 0..{num_layers - 1}")
    return tuple(blocks)


def texts(c) -> list[str]:
    """Real text, shuffled with the data seed: Wikipedia lead summaries and ShareGPT responses."""
    out = []
    for src in [s.strip() for s in str(c.sources).split(",") if s.strip()]:
        if src == "wikipedia":
            out += [d["text"] for d in load_wikipedia_summaries()][: int(c.per_source)]
        elif src == "sharegpt":
            out += [p["output"] for p in load_sharegpt_pairs()][: int(c.per_source)]
        else:
            raise KNNError(f"config.data.sources: unknown source {src!r}; choose wikipedia, sharegpt")
    require_nonempty(out, "kNN distillation texts", "check config.data.sources / per_source")
    random.Random(int(c.seed)).shuffle(out)
    return out


def rows(tok, items: list[str], max_tokens: int) -> dict[str, np.ndarray]:
    ids = [[tok.bos_token_id, *tok(t, add_special_tokens=False)["input_ids"]][:max_tokens] for t in items]
    tokens = np.zeros((len(ids), max_tokens), np.int32)
    valid = np.zeros((len(ids), max_tokens), bool)
    for i, r in enumerate(ids):
        tokens[i, : len(r)], valid[i, : len(r)] = r, True
    return {"tokens": tokens, "valid": valid, "num_tokens": valid.sum(-1).astype(np.int32)}


def with_hidden(params, cfg, arrays: dict, start: int, log) -> dict:
    t0 = time.perf_counter()
    arrays = dict(arrays, h=cache_hidden_rows(params, arrays["tokens"], arrays["valid"], cfg=cfg, layer=start))
    log(f"knn: stream entering block {start} cached for {len(arrays['h'])} rows "
        f"({arrays['h'].nbytes / 1e6:.0f} MB, {time.perf_counter() - t0:.0f}s)")
    return arrays


def cached_rows(path: Path, key: dict, make, base, cfg, start: int, log) -> dict:
    """`with_hidden(make())`, kept in `<path>.npz` for a resumed run (recomputed when `key` differs)."""
    npz, meta = path.with_suffix(".npz"), path.with_suffix(".json")
    if npz.exists() and meta.exists() and json.loads(meta.read_text()) == key:
        with np.load(npz) as f:
            arrays = {k: f[k] for k in f.files}
        log(f"knn: {len(arrays['h'])} cached rows read from {npz}")
        return arrays
    arrays = with_hidden(base, cfg, make(), start, log)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(npz)
    meta.write_text(json.dumps(key))
    return arrays


def score(trainable, base, stores, held, *, cfg, layers: dict, start: int) -> dict:
    """Held-out KL (T = 1, per token) to the original and perplexity."""
    kl = nll = n = 0.0
    for i in range(0, len(held["h"]), 16):
        sl = slice(i, i + 16)
        k, l, m = D.eval_rows(trainable, base, stores, jnp.asarray(held["h"][sl]), jnp.asarray(held["valid"][sl]),
                              jnp.asarray(held["tokens"][sl]), cfg=cfg, layers=tuple(sorted(layers.items())),
                              start=start)
        kl, nll, n = kl + float(k.sum()), nll + float(l.sum()), n + float(m.sum())
    ntok = float(held["valid"].sum())
    return {"kl": kl / ntok, "ppl": float(np.exp(nll / n))}


def layer_configs(kind: str, c, cfg, blocks) -> dict[int, KNNConfig]:
    m = c.method
    try:
        return {b: KNNConfig(kind=kind, d_model=cfg.hidden_size, key_dim=int(m.key_dim), k=int(m.k),
                             sub_keys=int(m.sub_keys), init_scale=float(m.init_scale),
                             value_gain=float(m.pk_value_gain)) for b in blocks}
    except ValueError as e:
        raise KNNError(f"config.method: {e}") from None


def open_stores(c, vdir: Path, layers: dict, info, *, resume: bool, only_existing: bool = False) -> dict:
    """The store of each store-backed block, `<vdir>/store<b>.sqlite`, checked against this run's spec.
    `only_existing`: open (to check) only the files already there."""
    stores = {}
    for b, lc in layers.items():
        if not lc.uses_store:
            continue
        path = vdir / f"store{b}.sqlite"
        if only_existing and not path.exists():
            continue
        if path.exists() and not resume:
            raise KNNError(f"{path} already exists; pass --resume or --overwrite. Nothing was overwritten.")
        try:
            spec = StoreSpec(key_dim=lc.key_dim, value_dim=lc.value_dim, capacity=int(c.method.capacity), k=lc.k,
                             owner=f"{info.id}:{info.content_hash}/block{b}/{lc.kind}",
                             merge_below=float(c.method.merge_below), insert_above=float(c.method.insert_above))
            stores[b] = KNNStore.open(str(path), spec)
        except StoreError as e:
            raise KNNError(str(e)) from None
    return stores


def train_variant(kind: str, c, cfg, base, info, train_rows, held, blocks, *, resume: bool, log) -> dict:
    vdir = Path(c.workdir).resolve() / kind
    vdir.mkdir(parents=True, exist_ok=True)
    m = c.method
    layers = layer_configs(kind, c, cfg, blocks)
    start = min(blocks)
    stores = open_stores(c, vdir, layers, info, resume=resume)
    writer = D.Writer(cfg, base, layers, stores)
    for b, st in stores.items():
        if st.step is not None:
            log(f"knn/{kind}: store of block {b} reopened: {len(st)} entries, committed at step {st.step}")
    rng = jax.random.split(jax.random.key(int(c.train.seed)), len(blocks))
    trainable = {str(b): init_knn(r, layers[b]) for b, r in zip(blocks, rng)}
    warm = int(m.warm_batches)
    if stores and all(len(s) == 0 for s in stores.values()) and warm:
        it = ArrayIterator(train_rows, int(c.train.batch_size), seed=int(c.train.seed) + 1)
        for _ in range(warm):
            writer.write(trainable, next(it), 0)
        log(f"knn/{kind}: stores written from {warm} batches before training: "
            + ", ".join(f"block {b} {len(s)} entries" for b, s in stores.items()))
    def eval_fn(tr, step):
        r = score(jax.device_get(tr), base, writer.device_stores(), held, cfg=cfg, layers=layers, start=start)
        return {"kl": r["kl"], "ppl": r["ppl"]}

    first = vdir / "step0.json"  # the KL before training (stores as warmed), kept for a resumed run's curve
    if not first.exists():
        kl0 = score(trainable, base, writer.device_stores(), held, cfg=cfg, layers=layers, start=start)["kl"]
        first.write_text(json.dumps({"kl": kl0}))
    spent = vdir / "train_s.json"  # training seconds up to the last checkpoint, summed over a resumed run's attempts
    spent_before = json.loads(spent.read_text())["train_s"] if resume and spent.exists() else 0.0
    t0 = time.perf_counter()

    def on_save(step):
        writer.on_save(step)
        spent.write_text(json.dumps({"train_s": spent_before + time.perf_counter() - t0, "step": step}))

    meta = {"base_model": info.id, "base_hash": info.content_hash, "method": "knn", "variant": kind,
            "blocks": list(blocks)}
    loss_fn = D.make_loss_fn(cfg, layers, temperature=float(m.temperature), ce_weight=float(m.ce_weight))
    c.train.batch_size = min(int(c.train.batch_size), len(train_rows["h"]))
    result = train(loss_fn, trainable, writer.frozen(), ArrayIterator(train_rows, int(c.train.batch_size),
                                                                       seed=int(c.train.seed)),
                   c, str(vdir), metadata=meta, eval_fn=eval_fn, resume=resume,
                   between_steps=writer.between_steps, on_save=on_save)
    train_s = spent_before + time.perf_counter() - t0
    final = score(jax.device_get(result.trainable), base, writer.device_stores(), held, cfg=cfg, layers=layers,
                  start=start)
    curve = [[0, json.loads(first.read_text())["kl"]]] + [
        [r["step"], r["eval/kl"]] for r in map(json.loads, Path(result.metrics_path).read_text().splitlines())
        if "eval/kl" in r]
    out = {"kl": final["kl"], "ppl": final["ppl"], "steps": result.step, "train_s": round(train_s, 1),
           "kl_curve": curve, "trainable_params": int(sum(x.size for x in jax.tree.leaves(result.trainable)))}
    if stores:
        out["store"] = {str(b): dict(s.stats(), entries=len(s)) for b, s in stores.items()}
    (vdir / REPORT).write_text(json.dumps(out, indent=2))
    return out


def train_run(c: ml_collections.ConfigDict, *, resume: bool = False, overwrite: bool = False, log=print) -> dict:
    t0 = time.perf_counter()
    workdir = Path(c.workdir or "checkpoints/knn").resolve()
    c.workdir = str(workdir)
    refuse_occupied_workdir(workdir, resume, overwrite, KNNError)
    variants = [v.strip() for v in str(c.method.variants).split(",") if v.strip()]
    bad = [v for v in variants if v not in TRAINED]
    if bad or not variants:
        raise KNNError(f"config.method.variants={c.method.variants!r}: choose from {', '.join(TRAINED)}")
    cfg, base, info = load_model(c.model.name)
    blocks = parse_blocks(c.method.blocks, cfg.num_layers)
    if int(c.method.capacity) < int(c.train.batch_size) * int(c.data.max_tokens):
        raise KNNError(f"config.method.capacity={c.method.capacity} is smaller than one step's inserts "
                       f"(batch {c.train.batch_size} x {c.data.max_tokens} tokens); raise it")
    for kind in variants:  # every store file already there is checked before anything is computed
        if resume and not (workdir / kind / REPORT).exists():
            for s in open_stores(c, workdir / kind, layer_configs(kind, c, cfg, blocks), info, resume=True,
                                 only_existing=True).values():
                s.close()
    tok = load_tokenizer(c.model.name)
    items = texts(c.data)
    n_held = int(c.data.held_out)
    if len(items) <= n_held:
        raise KNNError(f"{len(items)} texts but config.data.held_out={n_held}: need more texts than held out")
    start = min(blocks)
    if overwrite and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    key = {"base_hash": info.content_hash, "start": start, "data": json.loads(c.data.to_json())}
    held = cached_rows(workdir / "held_out", key, lambda: rows(tok, items[:n_held], int(c.data.max_tokens)),
                       base, cfg, start, log)
    train_rows = cached_rows(workdir / "train", key, lambda: rows(tok, items[n_held:], int(c.data.max_tokens)),
                             base, cfg, start, log)

    kw = dict(cfg=cfg, start=start)
    variants_out = {"teacher": dict(score({}, base, {}, held, layers={}, **kw), steps=0, train_s=0.0),
                    "ablated": dict(score({}, base, {}, held, layers={b: KNNConfig("ablated", cfg.hidden_size)
                                                                      for b in blocks}, **kw), steps=0, train_s=0.0)}
    log(f"knn: blocks {list(blocks)}; held-out KL teacher 0, ablated {variants_out['ablated']['kl']:.4f} "
        f"(ppl {variants_out['teacher']['ppl']:.2f} -> {variants_out['ablated']['ppl']:.2f})")
    for kind in variants:
        done = workdir / kind / REPORT
        if resume and done.exists():
            variants_out[kind] = json.loads(done.read_text())
            log(f"knn/{kind}: already trained (resume), kept")
            continue
        log(f"knn/{kind}: training {c.train.num_steps} steps")
        variants_out[kind] = train_variant(kind, c, cfg, base, info, train_rows, held, blocks,
                                           resume=resume, log=log)
        v = variants_out[kind]
        log(f"knn/{kind}: KL {v['kl']:.4f} ppl {v['ppl']:.2f} in {v['train_s']:.0f}s")
    abl = variants_out["ablated"]["kl"]
    for v in variants_out.values():
        v["gap_recovered"] = (abl - v["kl"]) / abl if abl > 0 else None
    report = {"blocks": list(blocks), "variants": variants_out, "model": c.model.name,
              "train_rows": len(train_rows["h"]), "held_out_rows": n_held,
              "held_out_tokens": int(held["valid"].sum()), "max_tokens": int(c.data.max_tokens),
              "sources": str(c.data.sources), "batch_size": int(c.train.batch_size), "lr": float(c.optim.lr),
              "temperature": float(c.method.temperature), "ce_weight": float(c.method.ce_weight),
              "k": int(c.method.k), "key_dim": int(c.method.key_dim), "capacity": int(c.method.capacity),
              "merge_below": float(c.method.merge_below), "insert_above": float(c.method.insert_above),
              "warm_batches": int(c.method.warm_batches),
              "device": jax.devices()[0].device_kind, "peak_rss_mb": peak_rss_mb(),
              "wall_s": round(time.perf_counter() - t0, 1)}
    report["store"] = store_summary(variants_out)
    lookup = Path(str(c.method.get("lookup_json") or ""))
    if lookup.is_file():  # the store's lookup cost at 10k / 100k / 1M entries (launch/bench_knn_store.py)
        bench = json.loads(lookup.read_text())
        report["store"].update(lookup_ms_per_token=bench["lookup_ms_per_token"], lookup_index=bench.get("index_by_size"),
                               lookup_source=str(lookup))
    plot = workdir / "kl_curve.png"
    plot_curves(variants_out, plot, abl)
    (workdir / REPORT).write_text(json.dumps(report, indent=2))
    report["outputs"] = {"workdir": str(workdir), "report": str(workdir / REPORT), "plot": str(plot)}
    if c.results_json:
        Path(c.results_json).parent.mkdir(parents=True, exist_ok=True)
        Path(c.results_json).write_text(json.dumps({k: v for k, v in report.items() if k != "outputs"}, indent=2))
        report["outputs"]["results"] = str(Path(c.results_json).resolve())
    return report


def store_summary(variants: dict) -> dict:
    """The store figures the results name: summed over the stores of the store-backed variants' blocks."""
    tot = {"entries": 0, "hits": 0, "inserts": 0, "evictions": 0, "recombinations": 0}
    for v in variants.values():
        for s in v.get("store", {}).values():
            for k in tot:
                tot[k] += int(s.get(k, 0))
    return tot


def plot_curves(variants: dict, path: Path, ablated: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, v in variants.items():
        if v.get("kl_curve"):
            xs, ys = zip(*v["kl_curve"])
            ax.plot(xs, ys, marker="o", ms=3, label=name)
    ax.axhline(ablated, color="gray", ls="--", label="ablated (FF removed)")
    ax.axhline(ablated / 2, color="gray", ls=":", label="50% of the gap")
    ax.set_xlabel("step")
    ax.set_ylabel("held-out KL to the original (nats/token)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
