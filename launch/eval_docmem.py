"""Evaluate document memories: recall with the right key, a wrong key, no key and the base model, per run, and
the scaling curve; on the largest run the edit test, gate distances and key interpolation.

    python launch/eval_docmem.py --workdirs=checkpoints/docmem10,checkpoints/docmem50,checkpoints/docmem200 \
        --results_json=results/docmem_eval.json
    python launch/eval_docmem.py --workdirs=checkpoints/docmem10 --doc_ids=Alan_Turing --results_json=/tmp/one.json

Each workdir is one run of launch/train_docmem.py (its training time and peak memory come from its report).
Recall: greedy generation of 32 tokens from each document's first 8 words, ROUGE-L F (0-1) against the true
continuation and exact-token match. `no_key` is the zero key (no document selected). The edit test zeroes the
keys of `--edit_documents` documents in the key table and regenerates every document. Prints a table and where
the outputs went.
"""

import json
import time
from pathlib import Path

import _common
from absl import app, flags

flags.DEFINE_list("workdirs", None, "document-memory workdirs (launch/train_docmem.py), one per scaling point")
flags.DEFINE_list("doc_ids", [], "evaluate only these documents (ids as trained); default all")
flags.DEFINE_string("model", "", "the base model the workdirs must have been trained on (default: theirs)")
flags.DEFINE_integer("edit_documents", 3, "documents forgotten (keys zeroed) in the edit test")
flags.DEFINE_integer("heatmap_documents", 50, "documents shown in the gate-distance heatmap")
flags.DEFINE_string("results_json", "results/docmem_eval.json", "where the results go (PNGs beside it)")
F = flags.FLAGS


def restrict(run: dict, ids: list[str]) -> list[int]:
    """The indices of `ids` among the run's documents; an id it was not trained on is a DocMemError."""
    from sycojax.methods.docmem.run import DocMemError  # noqa: PLC0415

    known = {d.id: i for i, d in enumerate(run["docs"])}
    missing = [x for x in ids if x not in known]
    if missing:
        sample = ", ".join(list(known)[:5])
        raise DocMemError(f"document {missing[0]!r} was not trained in this run ({len(known)} documents: {sample}, "
                          "...); give ids from its training documents")
    return [known[x] for x in ids] if ids else list(range(len(known)))


def evaluate_run(run: dict, ids: list[str]) -> dict:
    import numpy as np  # noqa: PLC0415

    from sycojax.methods.docmem import eval as E  # noqa: PLC0415

    sel = restrict(run, ids)
    rows = np.isin(run["arrays"]["doc"], sel)
    arrays = {k: v[rows] for k, v in run["arrays"].items()}
    remap = {d: i for i, d in enumerate(sel)}
    arrays["doc"] = np.asarray([remap[d] for d in arrays["doc"]], np.int32)
    docs = [run["docs"][i] for i in sel]
    t0 = time.perf_counter()
    wrong = E.wrong_keys(run["keys"])[sel]  # drawn from the whole table: a subset's figures are the full run's
    rep = E.evaluate(run["params"], run["cfg"], run["tok"], run["module"], run["mc"], run["layer"], run["keys"][sel],
                     docs, arrays, wrong=wrong)
    return dict(rep, eval_s=round(time.perf_counter() - t0, 1), selected=sel)


def point(run: dict, rep: dict) -> dict:
    tr = run["report"]
    r = rep["recall"]
    return {"n_docs": len(run["docs"]), "recall_right": r["own_key"]["rouge_l"],
            "recall_wrong": r["wrong_key"]["rouge_l"],
            "recall_nokey": r["no_key"]["rouge_l"], "recall_base": r["base"]["rouge_l"], "neg_ce": rep["ce"]["other"],
            "exact_right": r["own_key"]["exact_token_match"], "ce_own": rep["ce"]["own"], "ce_base": rep["ce"]["base"],
            "train_s": tr.get("train_s"), "peak_rss_gb": tr.get("peak_rss_gb"), "steps": tr.get("steps"),
            "epochs": tr.get("epochs"), "tokens": tr.get("tokens"), "trainable_params": tr.get("trainable_params"),
            "gate": run["mc"].gate, "memory_units": run["mc"].memory_units, "top_k": run["mc"].top_k,
            "key_dim": run["mc"].key_dim, "gate_l0": rep["gate_stats"]["l0"], "gate_l2": rep["gate_stats"]["l2"],
            "eval_s": rep["eval_s"], "workdir": run["workdir"]}


def plots(out: dict, dist, png_scaling: Path, png_gates: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    runs = sorted(out["runs"], key=lambda r: r["n_docs"])
    n = [r["n_docs"] for r in runs]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label in (("recall_right", "right key"), ("recall_wrong", "wrong key"), ("recall_nokey", "no key"),
                       ("recall_base", "base model")):
        a.plot(n, [r[key] for r in runs], "o-", label=label)
    a.set(xscale="log", xlabel="documents", ylabel="ROUGE-L F of 32 recalled tokens", ylim=(0, 1.05),
          title="recall vs number of documents")
    a.legend()
    b.plot(n, [(r["train_s"] or 0) / 60 for r in runs], "o-", label="training minutes")
    b.set(xscale="log", xlabel="documents", ylabel="minutes (2 CPU cores)", title="cost per point")
    b2 = b.twinx()
    b2.plot(n, [r["peak_rss_gb"] or 0 for r in runs], "s--", color="tab:red", label="peak RSS (GB)")
    b2.set_ylabel("peak RSS, GB")
    b.legend(loc="upper left"), b2.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(png_scaling, dpi=110)
    plt.close(fig)

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.4))
    im = a.imshow(dist, cmap="viridis")
    a.set(title=f"gate distances, first {len(dist)} documents", xlabel="document", ylabel="document")
    a.xaxis.set_major_locator(MaxNLocator(integer=True)), a.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.colorbar(im, ax=a)
    it = out["interpolation"]
    b.plot(it["t"], it["ppl_a"], "o-", label=f"document {it['documents'][0]}'s text")
    b.plot(it["t"], it["ppl_b"], "o-", label=f"document {it['documents'][1]}'s text")
    b.set(yscale="log", xlabel="t in (1-t) k_a + t k_b", ylabel="perplexity", title="key interpolation")
    b.legend()
    fig.tight_layout()
    fig.savefig(png_gates, dpi=110)
    plt.close(fig)


def main(argv):
    del argv
    _common.quiet_logs()
    if not F.workdirs:
        raise SystemExit("error: pass --workdirs=<one or more launch/train_docmem.py workdirs, comma-separated>")
    import numpy as np  # noqa: PLC0415

    from sycojax.methods.docmem import eval as E  # noqa: PLC0415
    from sycojax.methods.docmem.run import DocMemError, load_run  # noqa: PLC0415

    t0 = time.perf_counter()
    out = {"runs": []}
    largest = None
    with _common.one_line_errors(DocMemError):
        for w in F.workdirs:
            run = load_run(w, model=F.model or None)
            run["workdir"] = str(Path(w))
            rep = evaluate_run(run, F.doc_ids)
            out["runs"].append(point(run, rep))
            print(f"{w}: {len(rep['selected'])} documents evaluated in {rep['eval_s']:.0f}s", flush=True)
            if largest is None or len(run["docs"]) > len(largest[0]["docs"]):
                largest = (run, rep)
        run, rep = largest
        keys, arrays = run["keys"], run["arrays"]
        if not F.doc_ids and len(keys) > F.edit_documents:  # the further checks need every document
            prompts, truths = E.recall_prompts(run["tok"], run["docs"], arrays, rep["prompt_words"], rep["new_tokens"])
            before = np.asarray(rep["recall_per_document"]["own_key"])
            nokey = np.asarray(rep["recall_per_document"]["no_key"])
            out["edit"] = E.edit_test(run["params"], run["cfg"], run["tok"], run["module"], run["mc"], run["layer"],
                                      keys, prompts, truths, rep["new_tokens"], list(range(F.edit_documents)), before,
                                      nokey)
            out["edit"]["n_docs"] = len(keys)
            out["interpolation"] = E.interpolation(run["params"], run["module"], run["mc"], run["cfg"], run["layer"],
                                                   keys, arrays, 0, 1)
            dist = E.gate_distances(run["module"], run["mc"], keys[: F.heatmap_documents])
            off = dist[~np.eye(len(dist), dtype=bool)]
            out["gate_distances"] = {"n_docs": int(len(dist)), "mean_offdiag": float(off.mean()),
                                     "min_offdiag": float(off.min())}
        out.update(tau=rep.get("tau", 4.5), prompt_words=rep["prompt_words"], new_tokens=rep["new_tokens"],
                   device=_device(), wall_s=round(time.perf_counter() - t0, 1))
    path = Path(F.results_json)
    path.parent.mkdir(parents=True, exist_ok=True)
    outputs = {"results_json": str(path.resolve())}
    if "interpolation" in out:
        png_s, png_g = path.with_name(path.stem + "_scaling.png"), path.with_name(path.stem + "_gates.png")
        plots(out, dist, png_s, png_g)
        outputs.update(scaling_png=str(png_s.resolve()), gates_png=str(png_g.resolve()))
    out["outputs"] = outputs
    path.write_text(json.dumps(out, indent=2))
    print(f"\n{'docs':>5} {'right':>6} {'wrong':>6} {'no key':>6} {'base':>6} {'neg CE':>6} {'train s':>8} "
          f"{'RSS GB':>6}")
    for r in sorted(out["runs"], key=lambda r: r["n_docs"]):
        print(f"{r['n_docs']:>5} {r['recall_right']:>6.3f} {r['recall_wrong']:>6.3f} {r['recall_nokey']:>6.3f} "
              f"{r['recall_base']:>6.3f} {r['neg_ce']:>6.2f} {r['train_s'] or 0:>8.0f} {r['peak_rss_gb'] or 0:>6.2f}")
    if "edit" in out:
        e = out["edit"]
        print(f"edit ({e['n_docs']} documents, {len(e['removed'])} keys zeroed): removed recall "
              f"{e['removed_recall']:.3f} "
              f"(no key {e['nokey_recall']:.3f}, before {e['removed_recall_before']:.3f}); others' largest drop "
              f"{e['others_max_drop']:.3f}")
    for k, v in outputs.items():
        print(f"{k + ':':<14}{v}")


def _device() -> str:
    import jax  # noqa: PLC0415

    return jax.devices()[0].device_kind


if __name__ == "__main__":
    app.run(main)
