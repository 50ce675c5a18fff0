"""Benchmark sycojax against PyTorch (transformers + PEFT) on SmolLM2, both in the same run.

    python launch/bench.py                                  # every job, table on stdout
    python launch/bench.py --json=results/bench.json        # also write the rows as JSON
    python launch/bench.py --jobs=forward,generate_b1 --repeats=3
    python launch/bench.py --device=gpu --json=results/bench_h100.json   # both sides on the GPU

Each side of each job runs in a fresh process (its own peak RSS; PyTorch with
`torch.set_num_threads(<cores>)`, XLA on all cores). Times are min / median over `--repeats` runs
after warm-up (compilation excluded). `ratio = torch_s / jax_s`; `%peak` = model FLOP/s over the
fp32 matmul peak measured at the start of the run (JAX's for ours, PyTorch's for theirs);
`%peak cpu` and `cpu ratio` use process CPU time instead of wall time: on a machine whose cores
other jobs share, those are the figures to compare (wall time then measures the contention).
Jobs and columns: `sycojax/bench/jobs.py`, `sycojax/bench/runner.py`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from absl import app, flags

from sycojax.bench import runner
from sycojax.bench.jobs import ALL_SIDES, JOBS

_JOBS = flags.DEFINE_list("jobs", list(JOBS), f"jobs to run, in order; known: {', '.join(JOBS)}")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed runs per side (after warm-up); min and median are reported")
_JSON = flags.DEFINE_string("json", None, "write the rows (and run metadata) to this JSON file")
_SIDES = flags.DEFINE_list("sides", list(ALL_SIDES),
                           "which implementations to run, where a job has them: jax (ours), torch (eager), "
                           "torch_compile, hf_static_compile, llama_cpp_f32, llama_cpp_q8_0, jax_int8 (ours, int8 "
                           "weights; decode rows)")
_COMPILE_MODE = flags.DEFINE_enum("torch_compile_mode", "default",
                                  ["default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune"],
                                  "torch.compile mode of the torch_compile and hf_static_compile peers")
_DEVICE = flags.DEFINE_enum("device", "cpu", ["cpu", "gpu"],
                            "where both sides run: cpu (the default), or gpu (JAX on CUDA, PyTorch on cuda:0; "
                            "fp32 at full precision on both; the %peak columns are then MFU against the GPU's "
                            "measured fp32 matmul peak)")
_TIMEOUT = flags.DEFINE_integer("timeout", 1800,
                                "seconds before one side of one job is abandoned (its row shows the error)")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    if _REPEATS.value < 1:
        raise app.UsageError("--repeats must be >= 1")
    bad = [s for s in _SIDES.value if s not in ALL_SIDES]
    if bad:
        raise app.UsageError(f"unknown side(s) {bad}; choose from {', '.join(ALL_SIDES)}")
    if _DEVICE.value == "gpu":  # before the parent's first JAX use (the consolidate_e2e teacher replies)
        from sycojax.bench.hardware import jax_platform, setup_jax

        os.environ["JAX_PLATFORMS"] = jax_platform("gpu")
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # the workers need the GPU's memory too
        import jax

        jax.config.update("jax_platforms", jax_platform("gpu"))
        try:
            setup_jax("gpu")
        except RuntimeError as e:
            raise app.UsageError(str(e)) from None

    def write_json(out: dict) -> None:  # after every row: a run cut short keeps the rows it finished
        if _JSON.value:
            path = os.path.abspath(_JSON.value)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path + ".tmp", "w") as f:
                json.dump({"meta": out["meta"], "rows": [dataclasses.asdict(r) for r in out["rows"]]}, f, indent=2)
            os.replace(path + ".tmp", path)  # atomic: never a half-written file

    try:
        out = runner.run_jobs(_JOBS.value, _REPEATS.value, _SIDES.value, log=lambda s: print(s, flush=True),
                             timeout_s=_TIMEOUT.value, device=_DEVICE.value, on_row=write_json,
                             torch_compile_mode=_COMPILE_MODE.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    print()
    print(runner.format_peer_table(out["rows"], out["meta"]))
    print("\ndetail (ours against eager PyTorch):")
    print(runner.format_table(out["rows"]))
    m = out["meta"]
    print(f"\n{m['device']}: fp32 matmul peak: JAX {m['jax_peak_gflops']:.1f} GFLOP/s "
          f"({m['jax_peak_gflop_per_cpu_s']:.1f} per CPU-s), PyTorch {m['torch_peak_gflops']:.1f} GFLOP/s "
          f"({m['torch_peak_gflop_per_cpu_s']:.1f} per CPU-s); read bandwidth JAX {m['jax_read_gbps']:.1f} GB/s, "
          f"PyTorch {m['torch_read_gbps']:.1f} GB/s; {m['threads']} threads; {m['repeats']} repeats; "
          f"total {m['total_s']:.0f}s")
    if _JSON.value:
        print(f"wrote {_JSON.value}")
    if any(r.error for r in out["rows"]):
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
