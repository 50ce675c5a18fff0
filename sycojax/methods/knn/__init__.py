"""Discrete kNN memory layers (issue 22).

`store.py`: `KNNStore`, the memory store (keys and values in fixed-capacity arrays, top-k lookup exact or
through faiss IVF, insertion with recombination and LRFU eviction) and its `StoreSpec`; `sql.py`: the SQL
engine it persists through (SQLite, WAL); `bench.py`: `lookup_benchmark`, the lookup cost per token by store
size (what `launch/bench_knn_store.py` runs).
"""
