"""Matmul floors of the benchmark jobs: how close each can get to the `%peak` and ratio targets here.

    python launch/bench_floor.py --bench_json=results/bench.json --json=results/bench_floor.json

For each job of `launch/bench.py`, the time its matrix products alone take, each product timed on
its own at the job's shapes (`sycojax/bench/floor.py`), next to the job's measured times from
`--bench_json` (run it right before, on the same machine). Columns: `floor_s`; `jax_s / floor_s`
(how far our job is above its floor); `max %peak` = the job's model FLOPs (the bench's count) over
`floor_s · peak`, the best `%peak` these kernels allow; `max ratio` = `torch_s / floor_s`, the best
ratio against that run's PyTorch time. A floor leaves out every non-matmul op, so real jobs sit above it.
`consolidate_e2e`'s floor is a lower bound: the teacher pass, the training steps and the held-out
evaluations that run made, over real tokens only (no padding, no attention), LoRA products left out.
"""

from __future__ import annotations

import json
import os
import sys

import _common  # noqa: F401  (repo root on sys.path, offline Hugging Face)

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app, flags

_BENCH_JSON = flags.DEFINE_string("bench_json", "results/bench.json",
                                  "the `launch/bench.py --json` run whose times the floors are compared with")
_JSON = flags.DEFINE_string("json", None, "write the rows (and run metadata) to this JSON file")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed runs of each product (best is kept)")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if not os.path.isfile(_BENCH_JSON.value):
        raise app.UsageError(f"--bench_json={_BENCH_JSON.value} is missing: run "
                             f"`python launch/bench.py --json={_BENCH_JSON.value}` first")
    with open(_BENCH_JSON.value) as f:
        bench = json.load(f)
    from sycojax.bench.context import MODEL, Inputs
    from sycojax.bench.floor import job_floors
    from sycojax.bench.hardware import jax_matmul_peak
    from sycojax.bench.jobs import _consolidate_prepare
    from sycojax.models.loading import load_model

    cfg = load_model(MODEL)[0]
    peak = jax_matmul_peak()[0]
    bench_rows = {r["name"]: r for r in bench.get("rows", [])}
    e2e = (bench_rows.get("consolidate_e2e") or {}).get("extra") or {}
    data = _consolidate_prepare(MODEL) if e2e.get("jax_steps") else None  # the run's prompts and replies
    rows = job_floors(cfg, Inputs.build(MODEL), bench_rows, _REPEATS.value, e2e_data=data)
    for r in rows:
        r["max_peak_share"] = r["flops"] / (r["floor_s"] * peak) if r.get("flops") else None
        r["jax_peak_share"] = r["flops"] / (r["jax_s"] * peak) if r.get("flops") and r["jax_s"] else None

    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    print(f"\nfp32 matmul peak (this run): {peak / 1e9:.1f} GFLOP/s; times from {_BENCH_JSON.value}\n")
    print("| job | floor s | jax s | jax/floor | torch s | max ratio | jax %peak | max %peak |")
    print("|-----|---------|-------|-----------|---------|-----------|-----------|-----------|")
    for r in rows:
        print(f"| {r['name']} | {r['floor_s']:.2f} | {f(r['jax_s'], '.2f')} | {f(r['jax_over_floor'], '.2f')} | "
              f"{f(r['torch_s'], '.2f')} | {f(r['max_ratio'], '.2f')} | "
              f"{f(r['jax_peak_share'] and 100 * r['jax_peak_share'], '.0f')} | "
              f"{f(r['max_peak_share'] and 100 * r['max_peak_share'], '.0f')} |")
    if _JSON.value:
        meta = {"peak_gflops": peak / 1e9, "bench_json": _BENCH_JSON.value, "bench_meta": bench.get("meta"),
                "argv": sys.argv}
        with open(_JSON.value, "w") as f_:
            json.dump({"meta": meta, "rows": rows}, f_, indent=1)
        print(f"\nwrote {_JSON.value}")


if __name__ == "__main__":
    app.run(main)
