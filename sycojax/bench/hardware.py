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

**GPU** (`device="gpu"`, `launch/bench.py --device=gpu`): the same measurements on the first CUDA device,
with larger matmuls (`GPU_PEAK_SIZES`) and arrays; fp32 matmuls run at full fp32 precision on both sides
(`setup_jax` sets JAX's default matmul precision to "highest", PyTorch's default does not use TF32), so a
share of the measured peak is an MFU against fp32 matmuls. `device_peak_mb` gives each process's peak
GPU memory in use (JAX's allocator statistics, `torch.cuda.max_memory_allocated`).

**Peak RSS.** Each benchmark job runs in its own fresh process (one framework imported); the
process reports `peak_rss_mb()` (`sycojax.eval.efficiency`) at its end: the kernel's high-water mark of resident memory
(`VmHWM` from `/proc/self/status`, or `ru_maxrss` where /proc is missing). It covers the whole
job: imports, model load, compilation and the timed runs.
"""

from __future__ import annotations

import os
import sys

from sycojax.bench.timing import time_fn
from sycojax.eval.efficiency import peak_rss_mb  # noqa: F401 - re-exported: the methods report it too

PEAK_SIZES = (1024, 2048)
GPU_PEAK_SIZES = (4096, 8192)  # a GPU needs larger products to reach its peak
BANDWIDTH_BYTES = 512 * 2**20  # far larger than any cache
GPU_BANDWIDTH_BYTES = 4 * 2**30
DEVICES = ("cpu", "gpu")


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    return device


def jax_platform(device: str) -> str:
    """`JAX_PLATFORMS` for a benchmark device."""
    return {"cpu": "cpu", "gpu": "cuda"}[check_device(device)]


def setup_jax(device: str) -> None:
    """Call before the first JAX computation of a process: fp32 matmuls at full precision on a GPU."""
    import jax

    if check_device(device) == "gpu":
        if jax.default_backend() != "gpu":
            raise RuntimeError(f"--device=gpu but JAX's backend is {jax.default_backend()!r}: install jax[cuda]")
        jax.config.update("jax_default_matmul_precision", "highest")


def torch_device(device: str) -> str:
    """The PyTorch device of a benchmark device. Jobs place every tensor there explicitly: a global
    `torch.set_default_device` would add a dispatch cost to every PyTorch call (the first GPU run had it)."""
    return {"cpu": "cpu", "gpu": "cuda"}[check_device(device)]


def setup_torch(device: str):
    """Check PyTorch can run on the benchmark device; returns the `sync` that ends a timed run there."""
    import torch

    if check_device(device) == "cpu":
        return lambda x: x  # synchronous
    if not torch.cuda.is_available():
        raise RuntimeError("--device=gpu but torch.cuda.is_available() is False: install a CUDA build of PyTorch")

    def sync(x):
        torch.cuda.synchronize()
        return x

    return sync


def device_peak_mb(side: str, device: str) -> float | None:
    """Peak GPU memory in use by this process (MiB), None on CPU."""
    if device != "gpu":
        return None
    from sycojax.bench.jobs import framework

    if framework(side) == "torch":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    if framework(side) != "jax":
        return None
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None


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


def torch_matmul_peak(
    sizes=PEAK_SIZES, repeats: int = 5, sync=lambda x: x, device: str = "cpu"
) -> tuple[float, float]:
    """Best fp32 `(FLOP/s, FLOP per CPU-second)` of `torch.mm` (with the current `torch.get_num_threads()`)
    on `device` (a PyTorch device name)."""
    import torch

    best, best_cpu = 0.0, 0.0
    with torch.inference_mode():
        for n in sizes:
            g = torch.Generator().manual_seed(0)
            a, b = (torch.randn(n, n, generator=g).to(device) for _ in range(2))
            t = time_fn(lambda a=a, b=b: torch.mm(a, b), repeats=repeats, warmup=2, sync=sync)
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


def torch_read_bandwidth(
    nbytes: int = BANDWIDTH_BYTES, repeats: int = 5, sync=lambda x: x, device: str = "cpu"
) -> float:
    """Best bytes/s of `torch.sum` over `nbytes` of fp32 (with the current `torch.get_num_threads()`)."""
    import torch

    x = torch.ones(nbytes // 4, device=device)
    with torch.inference_mode():
        t = time_fn(lambda: torch.sum(x), repeats=repeats, warmup=2, sync=sync)
    return nbytes / t.min_s


if __name__ == "__main__":  # python -m sycojax.bench.hardware jax|torch THREADS [cpu|gpu] -> FLOP/s FLOP/CPU-s read-B/s
    side, threads = sys.argv[1], int(sys.argv[2])
    dev = sys.argv[3] if len(sys.argv) > 3 else "cpu"
    sizes, nbytes = (GPU_PEAK_SIZES, GPU_BANDWIDTH_BYTES) if dev == "gpu" else (PEAK_SIZES, BANDWIDTH_BYTES)
    if side == "torch":
        import torch

        torch.set_num_threads(threads)
        sync = setup_torch(dev)
        tdev = torch_device(dev)
        print(*torch_matmul_peak(sizes, sync=sync, device=tdev),
              torch_read_bandwidth(nbytes, sync=sync, device=tdev))
    elif side == "jax":
        setup_jax(dev)
        print(*jax_matmul_peak(sizes), jax_read_bandwidth(nbytes))
    else:
        sys.exit(f"unknown side {side!r}: jax or torch")
