"""What a kNN store lookup costs per token, by store size: exact search against faiss IVF, on filled stores.

`lookup_benchmark` fills one store per size through `bulk_load` (random unit keys and normal values, in chunks),
times `KNNStore.lookup` (top-k plus gathering the values) on one batch of queries for the exact search and for
faiss IVF at increasing `nprobe` until its recall@k against the exact top-k reaches `target_recall`, and picks
per size the index a store would use. Times are min and median over `repeats` runs after one warm-up run.

Rule for the index a store uses at a size: faiss-ivf at the smallest swept `nprobe` whose recall@k reaches
`target_recall`, when its median time per token is below the exact search's; otherwise exact.

`keys="uniform"` draws keys uniformly on the sphere, the worst case for IVF (no cluster structure, every
neighbour nearly as far as the next); `"clustered"` draws them around `size // 256` random centres
(cosine ~0.9 to their centre), closer to hidden states, which are far from uniform. Queries come from the same
distribution as the keys.
"""

from __future__ import annotations

import functools
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np

from sycojax.methods.knn.store import KNNStore, StoreSpec

_FILL_ROWS = 65_536  # rows generated and bulk-loaded at a time


def lookup_benchmark(sizes: Sequence[int], *, key_dim: int = 128, value_dim: int = 576, queries: int = 2048,
                     k: int = 16, nprobes: Sequence[int] = (8, 16, 32, 64, 96, 128, 192, 256, 384, 512),
                     target_recall: float = 0.9, repeats: int = 3, keys: str = "uniform", seed: int = 0,
                     log: Callable[[str], None] = lambda line: None) -> dict:
    """Lookup cost per token by store size (module docstring); the dict `results/knn_store.json` holds."""
    if keys not in ("uniform", "clustered"):
        raise ValueError(f"keys must be 'uniform' or 'clustered', got {keys!r}")
    by_index = {"exact": {}, "faiss-ivf": {}}
    chosen, rss = {}, {}
    for size in sizes:
        rng = np.random.default_rng(seed)
        draw = _sampler(rng, keys, key_dim, size)
        spec = StoreSpec(key_dim=key_dim, value_dim=value_dim, capacity=size, k=k, owner=f"bench/{keys}")
        store = KNNStore(spec, index="faiss-ivf", ann_min_entries=min(4096, size))
        t0 = time.perf_counter()
        for a in range(0, size, _FILL_ROWS):
            n = min(_FILL_ROWS, size - a)
            store.bulk_load(draw(n), rng.standard_normal((n, value_dim), dtype=np.float32), step=0)
        fill_s = time.perf_counter() - t0
        q = draw(queries)
        exact_idx = store.query(q, exact=True)[0]
        exact = _time(functools.partial(_lookup, store, q, exact=True), repeats, queries)
        by_index["exact"][str(size)] = {**exact, "fill_s": fill_s}
        log(f"{size:>9} exact      {exact['ms_per_token_median']:8.4f} ms/token (min {exact['ms_per_token_min']:.4f})")
        build_s = store.build_index()
        nlist = store.ann_nlist
        sweep = []
        for nprobe in sorted({min(p, nlist) for p in nprobes}):
            store.nprobe = nprobe
            recall = _recall(store.query(q)[0], exact_idx)
            row = {"nprobe": nprobe, "recall_at_k": recall, **_time(functools.partial(_lookup, store, q), repeats, queries)}
            sweep.append(row)
            log(f"{size:>9} faiss-ivf  {row['ms_per_token_median']:8.4f} ms/token (min {row['ms_per_token_min']:.4f}) "
                f"nlist {nlist} nprobe {nprobe} recall@{k} {recall:.3f}")
            if recall >= target_recall:
                break
        best = sweep[-1]
        by_index["faiss-ivf"][str(size)] = {
            **best, "nlist": nlist, "build_s": build_s, "reaches_target": best["recall_at_k"] >= target_recall,
            "speedup_vs_exact": exact["ms_per_token_median"] / best["ms_per_token_median"], "sweep": sweep}
        ivf_wins = best["recall_at_k"] >= target_recall and best["ms_per_token_median"] < exact["ms_per_token_median"]
        chosen[str(size)] = "faiss-ivf" if ivf_wins else "exact"
        rss[str(size)] = _rss_mb()
        del store, q, exact_idx
        gc.collect()
    largest = str(max(sizes))
    return {
        "lookup_ms_per_token": {s: by_index[chosen[s]][s]["ms_per_token_median"] for s in chosen},
        "index": chosen[largest],
        "index_by_size": chosen,
        "index_rule": (f"faiss-ivf at the smallest nprobe whose recall@{k} reaches {target_recall} when its median "
                       f"ms/token is below exact's; otherwise exact"),
        "by_index": by_index,
        "recall_at_k": {s: by_index["faiss-ivf"][s]["recall_at_k"] for s in chosen},
        "rss_mb": rss,
        "peak_rss_mb": _rss_mb("VmHWM"),
        "key_dim": key_dim, "value_dim": value_dim, "k": k, "queries": queries, "keys": keys,
        "target_recall": target_recall, "repeats": repeats,
        "machine": _machine(),
        "load_average": os.getloadavg()[0],
    }


def _sampler(rng: np.random.Generator, keys: str, dim: int, size: int) -> Callable[[int], np.ndarray]:
    if keys == "uniform":
        return lambda n: rng.standard_normal((n, dim), dtype=np.float32)
    centres = rng.standard_normal((max(1, size // 256), dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(n):
        noise = rng.standard_normal((n, dim), dtype=np.float32)
        noise *= 0.5 / np.linalg.norm(noise, axis=1, keepdims=True)  # |noise| = 0.5: cos ~0.9 to the centre
        return centres[rng.integers(len(centres), size=n)] + noise

    return draw


def _lookup(store: KNNStore, q: np.ndarray, exact: bool = False) -> np.ndarray:
    idx, _ = store.query(q, exact=exact)
    return store.values[np.maximum(idx, 0)]


def _time(fn: Callable[[], object], repeats: int, tokens: int) -> dict:
    fn()  # warm-up: faiss and BLAS thread pools, page faults
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return {"ms_per_token_min": 1e3 * min(runs) / tokens, "ms_per_token_median": 1e3 * statistics.median(runs) / tokens}


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row's true top-k that `found` holds."""
    hits = [len(set(f[f >= 0]) & set(t[t >= 0])) / max(1, np.count_nonzero(t >= 0)) for f, t in zip(found, truth)]
    return float(np.mean(hits))


def _rss_mb(field: str = "VmRSS") -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return f"{model}, {cores} cores"
