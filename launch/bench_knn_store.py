"""Lookup cost per token of the kNN memory store by size: exact search against faiss IVF.

    python launch/bench_knn_store.py --sizes=10000,100000,1000000 --key_dim=128 --value_dim=576 \
        --queries=2048 --k=16 [--json=results/knn_store.json]

Fills one store per size with random unit keys (`--keys=uniform`, IVF's worst case; `clustered` for keys
around centres), times a batched lookup (top-k and gathering the values) for the exact search and for faiss
IVF at growing nprobe until its recall@k reaches --target_recall, and prints a table. The JSON's
`lookup_ms_per_token` is, per size, the index a store would use there (the rule is in `index_rule`; see
`sycojax/methods/knn/bench.py`). Ends by printing where the JSON went.
"""

import json
import os

import _common
from absl import app, flags

_SIZES = flags.DEFINE_list("sizes", ["10000", "100000", "1000000"], "store sizes (entries) to fill and time")
_KEY_DIM = flags.DEFINE_integer("key_dim", 128, "key width")
_VALUE_DIM = flags.DEFINE_integer("value_dim", 576, "value width (SmolLM2-135M's hidden size)")
_QUERIES = flags.DEFINE_integer("queries", 2048, "queries in the timed batch (tokens of one step)")
_K = flags.DEFINE_integer("k", 16, "neighbours per query")
_NPROBES = flags.DEFINE_list("nprobes", ["8", "16", "32", "64", "96", "128", "192", "256", "384", "512"],
                             "faiss IVF nprobe values, tried in order until the recall reaches --target_recall")
_TARGET_RECALL = flags.DEFINE_float("target_recall", 0.9, "recall@k of IVF against exact that counts as good enough")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed runs per measurement (after one warm-up)")
_KEYS = flags.DEFINE_enum("keys", "uniform", ["uniform", "clustered"], "how the random keys are drawn")
_SEED = flags.DEFINE_integer("seed", 0, "random seed of keys, values and queries")
_JSON = flags.DEFINE_string("json", "results/knn_store.json", "where the results JSON goes")


def _ints(name, values):
    try:
        out = [int(v) for v in values]
    except ValueError:
        raise app.UsageError(f"--{name} must be integers, got {','.join(values)}") from None
    if not out or min(out) < 1:
        raise app.UsageError(f"--{name} must be positive integers, got {','.join(values)}")
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    from sycojax.methods.knn.bench import lookup_benchmark  # here: after _common set up sys.path
    from sycojax.methods.knn.store import StoreError

    _common.quiet_logs()  # faiss' loader logs at INFO
    sizes, nprobes = _ints("sizes", _SIZES.value), _ints("nprobes", _NPROBES.value)
    with _common.one_line_errors(StoreError):
        r = lookup_benchmark(sizes, key_dim=_KEY_DIM.value, value_dim=_VALUE_DIM.value, queries=_QUERIES.value,
                             k=_K.value, nprobes=nprobes, target_recall=_TARGET_RECALL.value,
                             repeats=_REPEATS.value, keys=_KEYS.value, seed=_SEED.value, log=print)
    k = r["k"]
    print(f"\n{r['machine']}; {r['queries']} queries, k={k}, keys {r['key_dim']}-d {r['keys']}, values "
          f"{r['value_dim']}-d; ms per token = median of {r['repeats']} runs (min)\n")
    print(f"| size | exact ms/token | ivf ms/token | ivf nlist/nprobe | ivf recall@{k} | ivf build s | "
          f"ivf speed-up | RSS MB | store uses |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for s in map(str, sizes):
        e, v = r["by_index"]["exact"][s], r["by_index"]["faiss-ivf"][s]
        print(f"| {int(s):,} | {e['ms_per_token_median']:.4f} ({e['ms_per_token_min']:.4f}) | "
              f"{v['ms_per_token_median']:.4f} ({v['ms_per_token_min']:.4f}) | {v['nlist']}/{v['nprobe']} | "
              f"{v['recall_at_k']:.3f} | {v['build_s']:.1f} | {v['speedup_vs_exact']:.1f}x | {r['rss_mb'][s]:.0f} | "
              f"{r['index_by_size'][s]} |")
    print(f"\nrule: {r['index_rule']}")
    os.makedirs(os.path.dirname(os.path.abspath(_JSON.value)), exist_ok=True)
    with open(_JSON.value, "w") as f:
        json.dump(r, f, indent=1)
    print(f"\nwrote {_JSON.value}")


if __name__ == "__main__":
    app.run(main)
