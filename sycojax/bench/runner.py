"""The parent side of `launch/bench.py`: prepare shared inputs, run each job's sides in fresh
processes, measure the matmul peaks and read bandwidth, and assemble the rows of the table.

Row fields (also the `--json` output): `name`, `jax_s` / `torch_s` (min seconds of one repetition),
`jax_median_s` / `torch_median_s`, `ratio = torch_s / jax_s` (> 1: ours is faster),
`jax_tokens_per_s` / `torch_tokens_per_s`, `flops_share` (our model FLOP/s over the JAX matmul
peak), `torch_flops_share` (theirs over the PyTorch matmul peak), for jobs with a byte count (generation)
`gbytes` (lower bound on GB read), `bw_floor_s` (those bytes at the machine's measured read bandwidth:
no implementation can be faster) and `bw_share` / `torch_bw_share` (that floor over each side's time),
`peak_rss_mb` / `torch_peak_rss_mb` (each side's worker process), `flops_share_cpu` /
`torch_flops_share_cpu` (the same per CPU-second, see `hardware`), `agree` (share of equal check items:
argmax tokens, generated tokens; for training rows 1.0 when the losses agree), `jax_cpu_s` / `torch_cpu_s` /
`cpu_ratio` (process CPU time, all threads: the figure to trust when other jobs share the cores), `gpu_peak_mb` /
`torch_gpu_peak_mb` (with `device="gpu"`: each side's peak GPU memory in use), `extra` (the job's own
named figures from both sides, e.g. `consolidate_e2e`'s KL target and the steps ours took to reach it).
A job without a token or FLOP count (`consolidate_e2e`) leaves the tok/s and %peak fields None.

Sides run in the order asked for, unless the job declares its own (`Job.order`); each side's spec
carries the results of the sides that ran before it (`Context.prior`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from sycojax.bench.context import MODEL, Context, Inputs, export_for_torch
from sycojax.bench.hardware import check_device, cpu_count, jax_platform
from sycojax.bench.jobs import ALL_SIDES, JAX, JAX_INT8, JOBS, LLAMA_Q8, PEER_KEY, TORCH
from sycojax.bench.worker import RESULT_MARK


@dataclasses.dataclass
class Row:
    name: str
    jax_s: float | None = None
    torch_s: float | None = None
    jax_median_s: float | None = None
    torch_median_s: float | None = None
    ratio: float | None = None
    jax_tokens_per_s: float | None = None
    torch_tokens_per_s: float | None = None
    flops_share: float | None = None
    torch_flops_share: float | None = None
    peak_rss_mb: float | None = None
    torch_peak_rss_mb: float | None = None
    agree: float | None = None
    jax_cpu_s: float | None = None  # min process CPU seconds of one repetition (all threads)
    torch_cpu_s: float | None = None
    cpu_ratio: float | None = None  # torch_cpu_s / jax_cpu_s: less sensitive to other jobs on the machine
    flops_share_cpu: float | None = None  # FLOP per CPU-second over the matmul's FLOP per CPU-second
    torch_flops_share_cpu: float | None = None
    tokens: int | None = None
    gflop: float | None = None
    gbytes: float | None = None  # lower bound on GB read per repetition (`Job.bytes`)
    bw_floor_s: float | None = None  # gbytes at the measured read bandwidth (the faster side's)
    bw_share: float | None = None  # bw_floor_s / jax_s
    torch_bw_share: float | None = None
    gpu_peak_mb: float | None = None  # device="gpu": peak GPU memory in use by each side's worker
    torch_gpu_peak_mb: float | None = None
    extra: dict | None = None  # the job's named figures (`Workload.info`) from every side
    error: str | None = None
    # the peers (`jobs.PEER_KEY` names: torch_eager, torch_compile, hf_static_compile, llama_cpp_f32, llama_cpp_q8_0)
    # that apply to this job: min seconds of one repetition, or why that peer could not run
    peers: dict | None = None
    best_peer_ratio: float | None = None  # fastest peer's seconds / ours (> 1: ours is faster than every peer)
    best_peer: str | None = None
    int8: float | None = None  # decode rows: min seconds of ours with weight-only int8 (`jobs.JAX_INT8`)
    int8_ratio_q8_0: float | None = None  # llama.cpp Q8_0 seconds / our int8 seconds
    peer_agree: dict | None = None  # each peer's (and int8's) check values against ours: share equal / close
    first_call_s: dict | None = None  # each side's first (warm-up) call: compilation + one run, apart from `*_s`
    recompiles: int | None = None  # XLA compilations during our timed runs (0: the warm-up compiled everything)


def prepare(
    model: str = MODEL, threads: int | None = None, names: Sequence[str] = (), device: str = "cpu",
    sides: Sequence[str] = ALL_SIDES, torch_compile_mode: str = "default",
) -> tuple[Context, object]:
    """Shared inputs + the HF export for the PyTorch side + the own inputs (`Job.prepare`) of the jobs
    `names` whose `prepare_sides` are among `sides`; returns the worker context and the config."""
    from sycojax.models.loading import load_model

    cfg = load_model(model)[0]
    shared = {}
    for n in names:
        if JOBS[n].prepare is not None and any(s in sides for s in JOBS[n].prepare_sides):
            try:
                shared[n] = JOBS[n].prepare(model)
            except Exception as e:  # fails before anything is timed: say which job, keep the cause
                raise RuntimeError(f"preparing the inputs of job {n!r} failed: {e}") from e
    return Context(model, str(export_for_torch(model)), Inputs.build(model), threads or cpu_count(), shared,
                   device=device, torch_compile_mode=torch_compile_mode), cfg


def _env(device: str) -> dict:
    """A worker's environment: JAX on the benchmark device; on a GPU, no up-front grab of its memory (the
    parent may hold some, and each worker's peak is read from the allocator)."""
    env = dict(os.environ, JAX_PLATFORMS=jax_platform(device), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false")
    if device == "gpu":
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    return env


def run_side(spec_path: str, job: str, side: str, repeats: int, timeout_s: float = 600, device: str = "cpu") -> dict:
    """One side of one job in a fresh Python process; raises with its stderr tail on failure."""
    env = _env(device)
    proc = subprocess.run(
        [sys.executable, "-m", "sycojax.bench.worker", spec_path, job, side, str(repeats)],
        capture_output=True, text=True, env=env, timeout=timeout_s, check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        raise RuntimeError(f"{job}/{side} worker failed (exit {proc.returncode}):\n{tail}")
    return json.loads(lines[-1][len(RESULT_MARK):])


def agreement(a, b, how: str = "agree") -> float | None:
    """Share of equal items (`agree`), or 1.0 / 0.0 for all-close within rtol 1e-3 (`close`)."""
    if a is None or b is None:
        return None
    if how == "close":
        return float(len(a) == len(b) and all(abs(x - y) <= 1e-3 * abs(y) + 1e-5 for x, y in zip(a, b)))
    n = max(len(a), len(b))
    return sum(x == y for x, y in zip(a, b)) / n if n else 1.0


# `Row` field of each per-side quantity (the JSON keeps its first-session names: JAX's share is `flops_share`).
_ROW_FIELDS = {
    side: {"s": f"{side}_s", "median_s": f"{side}_median_s", "cpu_s": f"{side}_cpu_s",
           "tokens_per_s": f"{side}_tokens_per_s",
           "rss": "peak_rss_mb" if side == JAX else f"{side}_peak_rss_mb",
           "share": "flops_share" if side == JAX else f"{side}_flops_share",
           "share_cpu": "flops_share_cpu" if side == JAX else f"{side}_flops_share_cpu",
           "bw_share": "bw_share" if side == JAX else f"{side}_bw_share",
           "gpu_mem": "gpu_peak_mb" if side == JAX else f"{side}_gpu_peak_mb"}
    for side in (JAX, TORCH)
}


def make_row(name: str, cfg, inputs: Inputs, res: dict[str, dict], peaks: dict[str, tuple[float, ...]],
             failed: dict[str, str] | None = None) -> Row:
    """`peaks[side] = (FLOP/s, FLOP per CPU-second, read bytes/s)` of that side's matmul and memory read;
    `res[side]` the results of the sides that ran, `failed[side]` why the others did not."""
    job = JOBS[name]
    tokens = job.tokens(inputs) if job.tokens is not None else None
    flop = job.flops(cfg, inputs) if job.flops is not None else None
    nbytes = job.bytes(cfg, inputs) if job.bytes is not None else None
    row = Row(name, tokens=tokens, gflop=None if flop is None else flop / 1e9)
    if nbytes is not None:
        row.gbytes = nbytes / 1e9
        row.bw_floor_s = nbytes / max(p[2] for p in peaks.values())
    j, t = res.get(JAX), res.get(TORCH)
    others = {k: v for k, v in res.items() if k not in (JAX, TORCH)}
    for side, r in ((JAX, j), (TORCH, t)):
        if not r:
            continue
        names = _ROW_FIELDS[side]
        values = {"s": r["min_s"], "median_s": r["median_s"], "cpu_s": r["cpu_min_s"], "rss": r["peak_rss_mb"],
                  "gpu_mem": r.get("device_peak_mb")}
        if tokens is not None:
            values["tokens_per_s"] = tokens / r["min_s"]
        if flop is not None:
            values["share"] = flop / r["min_s"] / peaks[side][0]
            values["share_cpu"] = flop / r["cpu_min_s"] / peaks[side][1]
        if row.bw_floor_s is not None:
            values["bw_share"] = row.bw_floor_s / r["min_s"]
        for key, value in values.items():
            setattr(row, names[key], value)
    if j and t:
        row.ratio = t["min_s"] / j["min_s"]
        row.cpu_ratio = t["cpu_min_s"] / j["cpu_min_s"]
        row.agree = agreement(j.get("check"), t.get("check"), job.compare)
    extra = {k: v for side in (t, *others.values(), j) if side for k, v in (side.get("info") or {}).items()}
    row.extra = extra or None
    add_peers(row, job, res, failed or {})
    return row


def add_peers(row: Row, job, res: dict[str, dict], failed: dict[str, str]) -> None:
    """The peer fields of `row` (`peers`, `best_peer_ratio`, `int8`, ...) from the sides' results `res` and the
    reasons `failed[side]` of those that could not run."""
    j = res.get(JAX)
    peers, agree, first = {}, {}, {}
    for side in job.sides:
        r = res.get(side)
        if r is not None:
            first[side] = r["first_s"]
        if side == JAX:
            continue
        if side in PEER_KEY and (r is not None or side in failed):
            peers[PEER_KEY[side]] = r["min_s"] if r is not None else failed[side]
        if r is not None and j is not None and side != TORCH:  # torch's agreement is the row's `agree`
            agree[PEER_KEY.get(side, side)] = agreement(j.get("check"), r.get("check"), job.compare)
    row.peers, row.peer_agree, row.first_call_s = peers or None, agree or None, first or None
    timed = {k: v for k, v in peers.items() if isinstance(v, float)}
    if j is not None and timed:
        row.best_peer = min(timed, key=timed.get)
        row.best_peer_ratio = timed[row.best_peer] / j["min_s"]
    if j is not None:
        row.recompiles = j.get("recompiles")
    if JAX_INT8 in res:
        row.int8 = res[JAX_INT8]["min_s"]
        q8 = peers.get(PEER_KEY[LLAMA_Q8])
        if isinstance(q8, float):
            row.int8_ratio_q8_0 = q8 / row.int8


def side_order(name: str, sides: Sequence[str]) -> list[str]:
    """The requested sides that job `name` has (`Job.sides`), in its declared `order` if it has one."""
    job = JOBS[name]
    return [s for s in (job.order or sides) if s in sides and s in job.sides]


def peer_failure(side: str, e: Exception) -> str:
    """One line saying why a side could not run: the last line of its worker's error."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    why = lines[-1] if lines else type(e).__name__
    return f"could not run: {why[:400]}"


def measure_peaks(threads: int, device: str = "cpu") -> dict[str, tuple[float, float, float]]:
    """fp32 matmul `(FLOP/s, FLOP per CPU-second)` and read bandwidth (bytes/s), each side in its own
    process like the jobs."""
    env = _env(device)
    out = {}
    for side in (JAX, TORCH):
        p = subprocess.run([sys.executable, "-m", "sycojax.bench.hardware", side, str(threads), device],
                           capture_output=True, text=True, env=env, check=True)
        out[side] = tuple(float(x) for x in p.stdout.strip().splitlines()[-1].split())
    return out


def run_jobs(
    names: Sequence[str], repeats: int, sides: Sequence[str] = (JAX, TORCH), log=print, timeout_s: float = 1800,
    device: str = "cpu", on_row=None, torch_compile_mode: str = "default",
) -> dict:
    """Run everything on `device` ("cpu" or "gpu"); returns `{"rows": [Row...], "peaks": ..., "meta": ...}`.

    `on_row(out)`, if given, gets that dict after every finished row (the rows so far, `meta["complete"]`
    False until the last): `launch/bench.py` writes its JSON there, so a run cut short keeps its rows.
    """
    unknown = [n for n in names if n not in JOBS]
    if unknown:
        raise ValueError(f"unknown job(s) {unknown}; known: {', '.join(JOBS)}")
    check_device(device)
    t0 = time.perf_counter()
    unknown = [s for s in sides if s not in ALL_SIDES]
    if unknown:
        raise ValueError(f"unknown side(s) {unknown}; known: {', '.join(ALL_SIDES)}")
    ctx, cfg = prepare(names=names, device=device, sides=sides, torch_compile_mode=torch_compile_mode)
    log(f"prepared inputs and HF export in {time.perf_counter() - t0:.1f}s ({ctx.hf_dir})")
    peaks = measure_peaks(ctx.threads, device)
    log(f"fp32 matmul peak: JAX {peaks[JAX][0] / 1e9:.1f} GFLOP/s ({peaks[JAX][1] / 1e9:.1f} per CPU-s), "
        f"PyTorch {peaks[TORCH][0] / 1e9:.1f} GFLOP/s ({peaks[TORCH][1] / 1e9:.1f} per CPU-s), {ctx.threads} threads; "
        f"read bandwidth JAX {peaks[JAX][2] / 1e9:.1f} GB/s, PyTorch {peaks[TORCH][2] / 1e9:.1f} GB/s")
    rows, device_name = [], _device_name(device)

    def result(complete: bool) -> dict:
        meta = {
            "model": ctx.model, "device": device, "device_name": device_name, "threads": ctx.threads,
            "repeats": repeats, "total_s": time.perf_counter() - t0, "complete": complete, "sides": list(sides),
            "torch_compile_mode": torch_compile_mode,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),  # the workers inherit them (sycojax/xla_cpu.py adds one)
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),  # e.g. glibc.malloc.hugetlb=1 (README)
            "jax_peak_gflops": peaks[JAX][0] / 1e9, "torch_peak_gflops": peaks[TORCH][0] / 1e9,
            "jax_peak_gflop_per_cpu_s": peaks[JAX][1] / 1e9, "torch_peak_gflop_per_cpu_s": peaks[TORCH][1] / 1e9,
            "jax_read_gbps": peaks[JAX][2] / 1e9, "torch_read_gbps": peaks[TORCH][2] / 1e9,
        }
        return {"rows": list(rows), "peaks": peaks, "meta": meta}

    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            res, err, failed = {}, None, {}
            for side in side_order(name, sides):
                spec = os.path.join(tmp, f"spec-{name}-{side}.json")
                with open(spec, "w") as f:  # with the results of this job's earlier sides (ctx.prior)
                    f.write(dataclasses.replace(ctx, prior=dict(res)).to_json())
                ts = time.perf_counter()
                try:
                    res[side] = run_side(spec, name, side, repeats, timeout_s, device)
                except Exception as e:  # noqa: BLE001 -- one failing side must not lose the other rows
                    if side in (JAX, JAX_INT8, TORCH):  # ours, or the reference every row has: the run fails
                        err = f"{side}: {e}" if err is None else f"{err}; {side}: {e}"
                    failed[side] = peer_failure(side, e)  # a peer that cannot run here: its row says why
                    log(f"  {name}/{side} FAILED: {e}")
                    continue
                r = res[side]
                log(f"  {name}/{side}: min {r['min_s']:.3f}s median {r['median_s']:.3f}s cpu {r['cpu_min_s']:.3f}s "
                    f"(first call {r['first_s']:.1f}s, setup {r['setup_s']:.1f}s, "
                    f"worker {time.perf_counter() - ts:.0f}s)")
                if r.get("info"):
                    log(f"    {format_extra(r['info'])}")
            row = make_row(name, cfg, ctx.inputs, res, peaks, failed)
            row.error = err
            rows.append(row)
            if on_row is not None and len(rows) < len(names):
                on_row(result(complete=False))
    out = result(complete=True)
    if on_row is not None:
        on_row(out)
    return out


def _device_name(device: str) -> str:
    if device == "gpu":
        import jax

        return f"{jax.devices()[0].device_kind} x{jax.device_count()}"
    import platform

    return f"{platform.processor() or platform.machine()}, {cpu_count()} cores"


def format_table(rows: Sequence[Row]) -> str:
    def f(x, fmt):
        return "-" if x is None else format(x, fmt)

    head = ("job", "jax min/med s", "torch min/med s", "ratio", "cpu ratio", "jax tok/s", "torch tok/s",
            "jax %peak", "torch %peak", "jax %peak cpu", "torch %peak cpu", "jax %bw", "torch %bw", "jax RSS MB",
            "torch RSS MB", "agree")
    gpu = any(r.gpu_peak_mb is not None or r.torch_gpu_peak_mb is not None for r in rows)
    head += ("jax GPU MB", "torch GPU MB") if gpu else ()
    lines = [head]
    for r in rows:
        lines.append((
            r.name, f"{f(r.jax_s, '.3f')}/{f(r.jax_median_s, '.3f')}",
            f"{f(r.torch_s, '.3f')}/{f(r.torch_median_s, '.3f')}",
            f(r.ratio, ".2f") + ("x" if r.ratio else ""), f(r.cpu_ratio, ".2f") + ("x" if r.cpu_ratio else ""),
            f(r.jax_tokens_per_s, ".0f"), f(r.torch_tokens_per_s, ".0f"),
            f(r.flops_share and 100 * r.flops_share, ".0f"),
            f(r.torch_flops_share and 100 * r.torch_flops_share, ".0f"),
            f(r.flops_share_cpu and 100 * r.flops_share_cpu, ".0f"),
            f(r.torch_flops_share_cpu and 100 * r.torch_flops_share_cpu, ".0f"),
            f(r.bw_share and 100 * r.bw_share, ".0f"), f(r.torch_bw_share and 100 * r.torch_bw_share, ".0f"),
            f(r.peak_rss_mb, ".0f"), f(r.torch_peak_rss_mb, ".0f"), f(r.agree, ".3f"),
        ) + ((f(r.gpu_peak_mb, ".0f"), f(r.torch_gpu_peak_mb, ".0f")) if gpu else ()))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    notes = [f"{r.name}: {format_extra(r.extra)}" for r in rows if r.extra]
    notes += [f"{r.name}: reads >= {r.gbytes:.1f} GB, {r.bw_floor_s:.2f}s at the measured read bandwidth"
              + (f"; the fastest possible ratio vs PyTorch is {r.torch_s / r.bw_floor_s:.2f}x" if r.torch_s else "")
              for r in rows if r.bw_floor_s]
    return "\n".join(out + ([""] + notes if notes else []))


def format_peer_table(rows: Sequence[Row], meta: dict | None = None) -> str:
    """The headline table: each job's seconds for ours and every peer, the ratio to the fastest peer, and ours as a
    share of the machine's measured peak (matmul FLOP/s; read bandwidth for the decode rows), then the first calls
    (compilation) apart."""
    def f(x, fmt=".3f"):
        return "-" if x is None else x if isinstance(x, str) else format(x, fmt)

    keys = [k for k in PEER_KEY.values() if any(r.peers and k in r.peers for r in rows)]
    head = ("job", "ours s", "int8 s", *keys, "best peer", "vs best", "ours %peak")
    lines, why = [head], []
    for r in rows:
        peers = r.peers or {}
        cells = []
        for k in keys:
            v = peers.get(k)
            if isinstance(v, str):
                why.append(f"{r.name}/{k}: {v}")
                v = "n/a"
            cells.append(f(v))
        share = (f"{100 * r.bw_share:.0f} bw" if r.bw_share is not None
                 else f"{100 * r.flops_share:.0f} mm" if r.flops_share is not None else "-")
        lines.append((r.name, f(r.jax_s), f(r.int8), *cells, r.best_peer or "-",
                      f(r.best_peer_ratio, ".2f") + ("x" if r.best_peer_ratio else ""), share))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    first = [f"{r.name}: " + ", ".join(f"{PEER_KEY.get(k, k)} {v:.1f}" for k, v in r.first_call_s.items())
             + ("" if r.recompiles is None else f"; ours recompiled {r.recompiles}x in the timed runs")
             for r in rows if r.first_call_s]
    notes = ["vs best = fastest peer's seconds / ours (> 1: ours is faster); %peak: model FLOP/s over the measured "
             "fp32 matmul peak (mm) or the bandwidth floor over ours (bw)"]
    if meta:
        notes.append(f"torch.compile mode: {meta.get('torch_compile_mode', 'default')}")
    return "\n".join(out + [""] + notes + (["", "first call (s): compilation + one run, apart from the times above:"]
                                          + first if first else []) + (["", "peers that could not run:"] + why
                                                                        if why else []))


def format_extra(extra: dict) -> str:
    """`key=value` for a job's scalar extra figures (lists, e.g. KL curves, stay in the JSON only)."""
    def f(v):
        return format(v, ".4g") if isinstance(v, float) else str(v)

    return ", ".join(f"{k}={f(v)}" for k, v in extra.items() if not isinstance(v, (list, tuple, dict)))
