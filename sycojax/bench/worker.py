"""Run one side of one job in this (fresh) process and print its measurements as one JSON line.

    python -m sycojax.bench.worker SPEC.json JOB SIDE REPEATS

SPEC.json holds a serialized `Context`. The last stdout line is `RESULT <json>` with the timings,
the check value, the job's extra figures (`info`), this process's peak RSS (see `hardware.peak_rss_mb`)
and, on a GPU (`ctx.device`), its peak GPU memory; a JAX side also counts its XLA compilations during
the timed runs (`recompiles`: 0 when every repetition reuses what the warm-up compiled). A side imports
one runtime (`jobs.framework`): PyTorch gets `torch.set_num_threads(ctx.threads)` (all cores) and, on a
GPU, the model and every input on cuda:0 (placed explicitly by the jobs) and a `torch.cuda.synchronize()`
at the end of each timed run; XLA's CPU client uses all cores by default; llama.cpp gets `ctx.threads`.
"""

from __future__ import annotations

import json
import os
import sys
import time

RESULT_MARK = "RESULT "


def run(spec_path: str, job_name: str, side: str, repeats: int) -> dict:
    from sycojax.bench.context import Context
    from sycojax.bench.hardware import device_peak_mb, peak_rss_mb, setup_jax, setup_torch
    from sycojax.bench.jobs import JOBS, framework
    from sycojax.bench.timing import block, time_fn

    with open(spec_path) as f:
        ctx = Context.from_json(f.read())
    threads, sync = None, block  # JAX: wait for the arrays; PyTorch: `setup_torch`'s (a CUDA sync on a GPU)
    runtime, compiles = framework(side), None
    if runtime == "torch":
        import torch

        torch.set_num_threads(ctx.threads)
        threads = torch.get_num_threads()
        sync = setup_torch(ctx.device)
    elif runtime == "jax":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        setup_jax(ctx.device)
        compiles = _count_compiles()
    else:  # llama.cpp: synchronous, its own threads (`ctx.threads`)
        threads = ctx.threads
    t0 = time.perf_counter()
    work = JOBS[job_name].build(side, ctx)
    setup_s = time.perf_counter() - t0
    last = []

    def once():
        last[:] = [work.run()]
        return last[0]

    def warm():  # from the first timed run on, an XLA compilation is a recompilation
        if compiles is not None:
            compiles[0] = 0

    timing = time_fn(once, repeats=repeats, warmup=work.warmup, sync=sync, on_warm=warm)
    recompiles = None if compiles is None else compiles[0]  # before `check`, whose own ops may compile
    return {
        "job": job_name, "side": side, "times_s": list(timing.times_s), "min_s": timing.min_s,
        "median_s": timing.median_s, "cpu_times_s": list(timing.cpu_times_s), "cpu_min_s": timing.cpu_min_s,
        "first_s": timing.first_s, "setup_s": setup_s, "peak_rss_mb": peak_rss_mb(), "threads": threads,
        "device_peak_mb": device_peak_mb(side, ctx.device),
        "check": work.check(last[0]), "info": work.info(last[0]),
        "recompiles": recompiles,
    }


def _count_compiles() -> list[int]:
    """A counter of XLA backend compilations in this process (`[n]`, updated as they happen)."""
    import jax
    from jax._src import dispatch  # the event XLA compilations are reported under

    count = [0]

    def on_event(event, duration, **kwargs):
        del duration, kwargs
        count[0] += event == dispatch.BACKEND_COMPILE_EVENT

    jax.monitoring.register_event_duration_secs_listener(on_event)
    return count


def main(argv: list[str]) -> None:
    if len(argv) != 5:
        sys.exit("usage: python -m sycojax.bench.worker SPEC.json JOB SIDE REPEATS")
    out = run(argv[1], argv[2], argv[3], int(argv[4]))
    sys.stdout.write(RESULT_MARK + json.dumps(out) + "\n")


if __name__ == "__main__":
    main(sys.argv)
