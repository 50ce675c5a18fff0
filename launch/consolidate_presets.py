"""Compare `launch/consolidate.py --preset=quick` and `--preset=quality` on the consolidation bench's contexts.

    python launch/consolidate_presets.py                                  # all 8 contexts, both presets
    python launch/consolidate_presets.py --contexts=facts,pirate --presets=quality

Each (context, preset) is exactly what the CLI runs with that preset and `--method=lora`: its own
training queries (ShareGPT, plus self-study questions under `quality`), scored on the bench's held-out
queries for that context (`sycojax.methods.sycomode_bench`). The JSON is rewritten after every run and
runs already in it are skipped, so an interrupted comparison resumes where it stopped.
"""

import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import _common
from absl import app, flags

from sycojax.methods import consolidate
from sycojax.methods import sycomode_bench as sb

F = flags.FLAGS
flags.DEFINE_string("contexts", "facts,pirate,signoff,french,json,caps,document,mtbench_system",
                    "comma list of bench contexts (in run order)")
flags.DEFINE_list("presets", ["quick", "quality"], "presets to compare")
flags.DEFINE_string("json", os.path.join(_common.ROOT, "results", "consolidate_presets.json"), "JSON output")
flags.DEFINE_float("target", 0.85, "the median gap closed `quality` should reach (issue 24)")
flags.DEFINE_float("minutes_per_context", 15.0, "the wall-time budget per context")


def held_out(ctx: sb.BenchContext, n: int) -> list[str]:
    """The bench's held-out queries for `ctx` (its own, then the general ones)."""
    queries = list(ctx.eval_queries[:n]) + list(sb.general_eval_queries())[: max(0, n - len(ctx.eval_queries))]
    return [q.text for q in queries]


def run_one(name: str, preset: str, scratch: str) -> dict:
    c = _common.load_config("consolidate.py")
    c.method.name = "lora"
    consolidate.apply_preset(c, preset)
    ctx = sb.default_contexts()[name]
    text = sb.context_text(ctx)
    eval_file = os.path.join(scratch, f"{name}-eval.txt")
    with open(eval_file, "w") as f:
        f.write("\n".join(held_out(ctx, c.data.num_eval_queries)) + "\n")
    c.data.context, c.data.eval_queries_file = text, eval_file
    c.workdir = os.path.join(scratch, f"{name}-{preset}")
    c.logging.progress_bar = False
    t0 = time.perf_counter()
    report = consolidate.run(c, overwrite=True, log=lambda s: print(f"  [{name}/{preset}] {s}", flush=True))
    wall = time.perf_counter() - t0
    shutil.rmtree(c.workdir, ignore_errors=True)
    return {"kind": ctx.kind, "gap_closed": report["gap_closed"], "kl_before": report["kl_before"],
            "kl_after": report["kl_after"], "kl_curve": report["kl_curve"], "steps": report["steps"],
            "num_train_queries": report["num_train_queries"], "num_eval_queries": report["num_eval_queries"],
            "wall_s": round(wall, 1), "timings_s": report["timings_s"], "peak_rss_mb": report["peak_rss_mb"],
            "samples": report["samples"][:1]}


def summarize(result: dict) -> dict:
    out = {}
    for preset in result["presets"]:
        rows = {n: r[preset] for n, r in result["contexts"].items() if preset in r}
        if not rows:
            continue
        gaps = [r["gap_closed"] for r in rows.values()]
        walls = [r["wall_s"] for r in rows.values()]
        out[preset] = {
            "contexts": len(rows), "median_gap_closed": statistics.median(gaps), "min_gap_closed": min(gaps),
            "facts_gap_closed": rows["facts"]["gap_closed"] if "facts" in rows else None,
            "median_wall_s": statistics.median(walls), "max_wall_s": max(walls),
        }
    q = out.get("quality")
    if q:
        out["quality_meets_target"] = bool(q["median_gap_closed"] >= result["target"]["median_gap_closed"]
                                           and q["max_wall_s"] <= 60 * result["target"]["minutes_per_context"]
                                           and q["contexts"] == len(result["context_order"]))
    return out


def main(argv):
    del argv
    _common.quiet_logs()
    names = sb.select(F.contexts, sb.default_contexts(), "context")
    result = {"contexts": {}}
    if os.path.isfile(F.json):
        with open(F.json) as f:
            result = json.load(f)
    result.update(
        command="python launch/consolidate_presets.py " + " ".join(sys.argv[1:]),
        method="lora", context_order=names, presets={p: consolidate.PRESETS[p] for p in F.presets},
        target={"median_gap_closed": F.target, "minutes_per_context": F.minutes_per_context},
        machine=f"{os.cpu_count()} CPU cores",
    )
    scratch = tempfile.mkdtemp(prefix="presets-")
    with _common.one_line_errors():
        for name in names:
            for preset in F.presets:
                if preset in result["contexts"].get(name, {}):
                    continue
                print(f"{name} / {preset} ...", flush=True)
                row = run_one(name, preset, scratch)
                result["contexts"].setdefault(name, {})[preset] = row
                result["summary"] = summarize(result)
                with open(F.json + ".tmp", "w") as f:
                    json.dump(result, f, indent=1)
                os.replace(F.json + ".tmp", F.json)  # never a half-written JSON
                print(f"{name} / {preset}: gap closed {100 * row['gap_closed']:.1f}% in {row['wall_s']:.0f}s",
                      flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    print()
    for preset, s in result.get("summary", {}).items():
        if isinstance(s, dict):
            facts = "n/a" if s["facts_gap_closed"] is None else f"{100 * s['facts_gap_closed']:.1f}%"
            print(f"{preset:>8}: median gap closed {100 * s['median_gap_closed']:.1f}% over {s['contexts']} contexts "
                  f"(facts {facts}), median {s['median_wall_s'] / 60:.1f} min, max {s['max_wall_s'] / 60:.1f} min")
    print(f"json: {F.json}")


if __name__ == "__main__":
    app.run(main)
