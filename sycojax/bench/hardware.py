"""What this machine can do, measured: fp32 matmul peak (JAX and PyTorch) and peak resident memory.

**Matmul peak.** `jax_matmul_peak()` / `torch_matmul_peak()` time `C = A @ B` for square fp32
matrices of a few sizes (min over repeats, compiled/warm) and return the best FLOP/s, counting
`2 n³` per product. A job's `flops_share` is its model FLOP/s divided by this number, so it is a
share of what a large plain matmul reaches on the same machine in the same run, not of a
datasheet figure.

The same runs also give FLOP per CPU-second (process CPU time, all threads): a job's
`flops_share_cpu` divides its FLOP per CPU-second by that. Where other processes share the cores,
wall-clock shares mostly measure the contention; the CPU-time share measures our code.

**Read bandwidth.** `jax_read_bandwidth()` / `torch_read_bandwidth()` time a sum over a 512 MiB fp32
array (min over repeats): bytes read per second from memory, with all threads. A generate row's
`bw_floor_s` is its `flops.generate_bytes` over the larger of the two: the time that merely streaming
the weights (and the K/V read) from memory takes, which no decoding loop in fp32 can beat; `bw_share`
is that floor over the measured time.

**Peak RSS.** Each benchmark job runs in its own fresh process (one framework imported); the
process reports `peak_rss_mb()` at its end: the kernel's high-water mark of resident memory
(`VmHWM` from `/proc/self/status`, or `ru_maxrss` where /proc is missing). It covers the whole
job: imports, model load, compilation and the timed runs.
"""

from __future__ import annotations

import os
import resource
import sys

from sycojax.bench.timing import time_fn

PEAK_SIZES = (1024, 2048)
BANDWIDTH_BYTES = 512 * 2**20  # far larger than any cache


def cpu_count() -> int:
    """Cores this process may run on (what the thread pools should use)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def jax_matmul_peak(sizes=PEAK_SIZES, repeats: int = 5) -> tuple[float, float]:
    """Best fp32 `(FLOP/s, FLOP per CPU-second)` of a jitted `jnp.dot` over square sizes `n`."""
    import jax
    import jax.numpy as jnp

    dot = jax.jit(jnp.dot)
    best, best_cpu = 0.0, 0.0
    for n in sizes:
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        t = time_fn(lambda a=a, b=b: dot(a, b), repeats=repeats, warmup=2)
        best, best_cpu = max(best, 2 * n**3 / t.min_s), max(best_cpu, 2 * n**3 / t.cpu_min_s)
    return best, best_cpu


def torch_matmul_peak(sizes=PEAK_SIZES, repeats: int = 5) -> tuple[float, float]:
    """Best fp32 `(FLOP/s, FLOP per CPU-second)` of `torch.mm` (with the current `torch.get_num_threads()`)."""
    import torch

    best, best_cpu = 0.0, 0.0
    with torch.inference_mode():
        for n in sizes:
            g = torch.Generator().manual_seed(0)
            a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
            t = time_fn(lambda a=a, b=b: torch.mm(a, b), repeats=repeats, warmup=2, sync=lambda x: x)
            best, best_cpu = max(best, 2 * n**3 / t.min_s), max(best_cpu, 2 * n**3 / t.cpu_min_s)
    return best, best_cpu


def jax_read_bandwidth(nbytes: int = BANDWIDTH_BYTES, repeats: int = 5) -> float:
    """Best bytes/s of a jitted fp32 sum over `nbytes` (a streaming read)."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones((nbytes // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    t = time_fn(lambda: total(x), repeats=repeats, warmup=2)
    return nbytes / t.min_s


def torch_read_bandwidth(nbytes: int = BANDWIDTH_BYTES, repeats: int = 5) -> float:
    """Best bytes/s of `torch.sum` over `nbytes` of fp32 (with the current `torch.get_num_threads()`)."""
    import torch

    x = torch.ones(nbytes // 4)
    with torch.inference_mode():
        t = time_fn(lambda: torch.sum(x), repeats=repeats, warmup=2, sync=lambda y: y)
    return nbytes / t.min_s


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory, in MiB."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, kB on Linux


if __name__ == "__main__":  # python -m sycojax.bench.hardware jax|torch THREADS -> "FLOP/s FLOP/CPU-s read-bytes/s"
    side, threads = sys.argv[1], int(sys.argv[2])
    if side == "torch":
        import torch

        torch.set_num_threads(threads)
        print(*torch_matmul_peak(), torch_read_bandwidth())
    elif side == "jax":
        print(*jax_matmul_peak(), jax_read_bandwidth())
    else:
        sys.exit(f"unknown side {side!r}: jax or torch")
