"""The memory store of a discrete kNN memory layer: keys and values in fixed-capacity numpy arrays, top-k lookup
(exact, or a faiss IVF index), batched insertion with recombination and LRFU eviction, persisted in SQL.

The semantics follow ConsciousCode/llm-experiments' `vdb.py` (`AssociativeMemory`); the code is ours.

Arrays. `keys (capacity, key_dim) float32` (unit rows), `values (capacity, value_dim) float32`,
`valid (capacity,) bool`, and per slot `ctime`, `atime` (training steps), `access` (hit count) and `crf`, the
LRFU combined recency-frequency score: a hit at step t sets `crf = crf * 2**(-lambda*(t - atime)) + 1`, and
the score's value at step t is `crf * 2**(-lambda*(t - atime))`. Inserting an entry counts as its first
reference (`crf = 1`, `access = 0`). The arrays never change shape; a deleted slot has `valid = False` and zero
rows, and is reused by later inserts (the lowest free slots first). A jitted step can read `arrays()` directly.

Distance: squared L2 between unit vectors, `d = 2 - 2 cos` in [0, 4] (faiss' L2 on normalised keys). Queries
are normalised like keys.

Insert (one batch of new keys, each against the entries stored before the batch):
- recombination: a new key's top-k neighbours with `d < merge_below`, when there are two or more, become ONE
  entry (in the lowest of their slots): key = the `exp(-d)`-weighted mean of their keys, re-normalised, value =
  the same weights over their values, `ctime` = min, `atime` = max, `access` = sum, `crf` = the sum of their
  scores at that `atime`. A stored entry joins at most one recombination per batch (the first row claiming it).
- novelty: the new key is stored when ALL its top-k distances exceed `insert_above` (missing neighbours, in a
  store with fewer than k entries, count as far). Within one batch, a new key within `insert_above` of a key
  stored earlier in the same batch is not stored again.
- eviction: when the free slots do not hold the new keys, the entries with the lowest current LRFU score go
  (ties: the least recently accessed, then the lowest slot). Keys of this batch are never evicted by it.
The neighbour search of `insert` goes through the store's index, like `query`.

ANN. `index="exact"`: one matmul per block of queries and an exact top-k (the block-maximum shortcut of
`_top_k_columns`). `index="faiss-ivf"`: faiss `IndexIVFFlat`, inner product on the unit keys, `nlist` lists
(default `sqrt(n)`), `nprobe` of them searched. It is built (k-means trained on the stored keys) by
`build_index()` or at the first query once the store holds `ann_min_entries`; below that the exact search
answers (it is faster there). After that it follows the arrays lazily: inserts, recombinations and evictions
mark slots stale, and the next query removes their ids (`remove_ids`) and adds the live ones (`add_with_ids`, the
slot is the id); the lists are retrained from scratch once the store holds twice the entries they were trained
on. faiss rather than hnswlib or usearch: it is the best kept of the three (Meta; CPU and GPU builds; wheels for
current numpy), IVF-Flat holds 1M x 128 float32 keys in 0.5 GiB next to the arrays, and it deletes by id,
which HNSW graphs handle poorly. Measured (`launch/bench_knn_store.py`, 2 shared CPU cores, 2048 queries,
k=16): IVF pays off on keys with cluster structure (keys around size/256 centres, 100k entries: recall@16 1.0
at nprobe 8, 0.08 against 0.62 ms per query exact), not on keys uniform on the sphere, its worst case (recall
0.9 needs half the lists, and the exact search is faster from 100k entries; 1M: 7.3 against 14 ms per query).
So `exact` is the default; measure on the real keys before choosing `faiss-ivf`.

Persistence (`persist.py` over `sql.py`, SQLite by default). Tables `meta(name, value)` (the spec as JSON, the step of the last
commit, the counters) and `entries(slot, ctime, atime, access, crf, key, value)`. `commit(step)` writes every
slot changed since the last commit and the meta in one transaction: a file holds exactly the last committed
batch, whatever happened to the process after it. Changes not committed are lost at `close()`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import numpy as np

from sycojax.methods.knn import persist
from sycojax.methods.knn.persist import StoreError, StoreMismatchError  # noqa: F401  (raised here; users import them from here)
from sycojax.methods.knn.sql import SqlEngine, SqliteEngine

INDEXES = ("exact", "faiss-ivf")
_SCORE_BLOCK = 1 << 26  # floats in one (queries, entries) score block of the exact search: 256 MiB
_TOP_K_BLOCK = 256  # columns per block of the exact top-k shortcut
_DEDUPE_ROWS = 2048  # new keys compared at a time within one insert batch


@dataclasses.dataclass(frozen=True)
class StoreSpec:
    """What a store holds and how it updates. `owner` names what the keys belong to (model, weights hash, block,
    feature: `"HuggingFaceTB/SmolLM2-135M-Instruct:<hash>/block14/featural"`); a store file records every field
    and refuses to open for another spec."""

    key_dim: int
    value_dim: int
    capacity: int
    k: int
    owner: str
    merge_below: float = 2 / 3
    insert_above: float = 1 / 3
    lrfu_lambda: float = 0.01

    def __post_init__(self):
        for name in ("key_dim", "value_dim", "capacity", "k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise StoreError(f"StoreSpec.{name} must be a positive integer, got {v!r}")
            object.__setattr__(self, name, int(v))
        if self.k > self.capacity:
            raise StoreError(f"StoreSpec.k={self.k} is larger than capacity={self.capacity}")
        if not isinstance(self.owner, str) or not self.owner:
            raise StoreError("StoreSpec.owner must name what the keys belong to, e.g. "
                             "'HuggingFaceTB/SmolLM2-135M-Instruct:<hash>/block14/featural'")
        for name in ("merge_below", "insert_above", "lrfu_lambda"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating)) or not math.isfinite(v) or v < 0:
                raise StoreError(f"StoreSpec.{name} must be a finite number >= 0, got {v!r}")
            object.__setattr__(self, name, float(v))


class KNNStore:
    """A kNN memory store (module docstring). `path=None` keeps it in memory only; a path opens that store
    file or creates it (`KNNStore.open`). `engine` replaces the SQLite file with another `SqlEngine`."""

    def __init__(self, spec: StoreSpec, path: str | os.PathLike | None = None, index: str = "exact", *,
                 nprobe: int = 32, nlist: int | None = None, ann_min_entries: int = 4096,
                 engine: SqlEngine | None = None):
        if not isinstance(spec, StoreSpec):
            raise StoreError(f"spec must be a StoreSpec, got {type(spec).__name__}")
        if index not in INDEXES:
            raise StoreError(f"index must be one of {', '.join(INDEXES)}, got {index!r}")
        _positive_int("nprobe", nprobe)
        _positive_int("ann_min_entries", ann_min_entries)
        if nlist is not None:
            _positive_int("nlist", nlist)
        self.spec = spec
        self.index = index
        self.nlist = nlist
        self.ann_min_entries = max(ann_min_entries, nlist or 1)
        self._nprobe = nprobe
        c = spec.capacity
        self.keys = np.zeros((c, spec.key_dim), np.float32)
        self.values = np.zeros((c, spec.value_dim), np.float32)
        self.valid = np.zeros(c, bool)
        self.ctime = np.zeros(c, np.int64)
        self.atime = np.zeros(c, np.int64)
        self.access = np.zeros(c, np.int64)
        self.crf = np.zeros(c, np.float64)
        self.step: int | None = None  # step of the last commit (None: never committed)
        self.build_seconds: float | None = None  # how long the last faiss build took
        self._counters = {"hits": 0, "inserts": 0, "evictions": 0, "recombinations": 0}
        self._dirty = np.zeros(c, bool)  # changed since the last commit
        self._ann = None
        self._ann_stale = np.zeros(c, bool)  # changed since the faiss index last saw the slot
        self._ann_trained_on = 0
        self._commit_hook = None  # tests: called inside commit's transaction, between the entries and the meta
        if engine is None and path is not None:
            engine = SqliteEngine(path)
        self.path = None if engine is None else engine.name
        self._engine = engine
        if engine is not None:
            persist.open_file(self)

    @classmethod
    def open(cls, path: str | os.PathLike, spec: StoreSpec, index: str = "exact", **kwargs) -> KNNStore:
        """The store file at `path` (created if missing). Raises `StoreMismatchError` for a file written for
        another spec, `StoreError` for a file that is not a store or cannot be written; none of them is changed."""
        return cls(spec, path, index, **kwargs)

    # ---- reading ------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(np.count_nonzero(self.valid))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`(keys, values, valid)`, capacity-shaped; updated in place by `insert`, `bulk_load` and `touch`."""
        return self.keys, self.values, self.valid

    def stats(self) -> dict:
        """The counters (`hits`, `inserts`, `evictions`, `recombinations`, since the store was created) and
        `entries` (how many slots hold one)."""
        return {**self._counters, "entries": len(self)}

    @property
    def ann_nlist(self) -> int | None:
        """The faiss index's list count (None until it is built)."""
        return None if self._ann is None else int(self._ann.nlist)

    @property
    def nprobe(self) -> int:
        return self._nprobe

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._nprobe = _positive_int("nprobe", value)
        if self._ann is not None:
            self._ann.nprobe = min(self._nprobe, self._ann.nlist)

    def query(self, queries, k: int | None = None, *, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Top-k stored entries of each query: `(idx (n, k) int64, dist (n, k) float32)`, nearest first, `d = 2 -
        2 cos`; idx -1 and dist inf where the store holds fewer than k. Through the faiss index when the store
        uses one (`exact=True`: always exact). Access statistics do not change (that is `touch`)."""
        k = self.spec.k if k is None else _positive_int("k", k)
        q = self._unit_rows("queries", queries)
        if not exact and self.index == "faiss-ivf" and self._ann_sync():
            return self._ann_query(q, k)
        return self._exact_query(q, k)

    def lookup(self, queries, k: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`query` plus the values: `(idx, dist, values (n, k, value_dim))`, zero values where idx is -1."""
        idx, dist = self.query(queries, k)
        values = self.values[np.maximum(idx, 0)]
        values[idx < 0] = 0
        return idx, dist, values

    # ---- writing ------------------------------------------------------------------------------------------

    def touch(self, idx, step: int) -> None:
        """Record hits at `step` on the slots `idx` (any shape, as `query` returns: -1 is skipped, a slot that
        appears m times is hit m times): `atime` = max, `access` += m, `crf` decayed to `step` plus m. Touch the
        indices of a query before the next insert: a slot that no longer holds an entry raises."""
        idx = np.asarray(idx)
        if not np.issubdtype(idx.dtype, np.integer):
            raise StoreError(f"touch: idx must be integers, got {idx.dtype}")
        step = _step(step)
        flat = idx.ravel()
        bad = (flat < -1) | (flat >= self.spec.capacity)
        if bad.any():
            raise StoreError(f"touch: slot {int(flat[bad][0])} is outside [-1, {self.spec.capacity})")
        slots, counts = np.unique(flat[flat >= 0], return_counts=True)
        empty = slots[~self.valid[slots]]
        if empty.size:
            raise StoreError(f"touch: slot {int(empty[0])} holds no entry (touch a query's indices before the "
                             f"next insert)")
        self.crf[slots] = self._score(slots, step) + counts
        self.atime[slots] = np.maximum(self.atime[slots], step)
        self.access[slots] += counts
        self._dirty[slots] = True
        self._counters["hits"] += int(counts.sum())

    def insert(self, keys, values, step: int) -> dict:
        """Insert one batch (module docstring: recombination, novelty, in-batch duplicates, LRFU eviction).
        Returns `{"inserted", "recombined" (entries made by recombination), "evicted"}`."""
        keys = self._unit_rows("keys", keys)
        values = self._rows("values", values, self.spec.value_dim)
        step = _step(step)
        n = len(keys)
        if len(values) != n:
            raise StoreError(f"insert: {n} keys but {len(values)} values")
        if n > self.spec.capacity:
            raise StoreError(f"capacity {self.spec.capacity} is smaller than one step's {n} inserts; raise "
                             f"--capacity to at least {n}")
        if n == 0:
            return {"inserted": 0, "recombined": 0, "evicted": 0}
        idx, dist = self.query(keys)  # neighbours among the entries stored before this batch
        recombined = self._recombine(idx, dist)
        novel = np.flatnonzero(np.all(dist > self.spec.insert_above, axis=1))
        rows = self._first_of_duplicates(keys, novel)
        evicted = self._make_room(len(rows), step)
        slots = np.flatnonzero(~self.valid)[:len(rows)]
        self._write(slots, keys[rows], values[rows], ctime=step, atime=step, access=0, crf=1.0)
        self._counters["inserts"] += len(rows)
        return {"inserted": len(rows), "recombined": recombined, "evicted": evicted}

    def bulk_load(self, keys, values, step: int) -> np.ndarray:
        """Store `keys`/`values` as they are, in the lowest free slots: no recombination, no duplicate check, no
        eviction (they must fit). For filling a store (benchmarks, a store built offline). Returns the slots."""
        keys = self._unit_rows("keys", keys)
        values = self._rows("values", values, self.spec.value_dim)
        step = _step(step)
        if len(values) != len(keys):
            raise StoreError(f"bulk_load: {len(keys)} keys but {len(values)} values")
        free = np.flatnonzero(~self.valid)
        if len(keys) > len(free):
            raise StoreError(f"bulk_load: {len(keys)} entries do not fit in the {len(free)} free slots of a "
                             f"capacity-{self.spec.capacity} store")
        slots = free[:len(keys)]
        self._write(slots, keys, values, ctime=step, atime=step, access=0, crf=1.0)
        self._counters["inserts"] += len(keys)
        return slots

    def commit(self, step: int) -> None:
        """Write every slot changed since the last commit, the step and the counters, in one transaction. A store
        without a file only records the step."""
        step = _step(step)
        if self._engine is not None:
            slots = np.flatnonzero(self._dirty)
            live, dead = slots[self.valid[slots]], slots[~self.valid[slots]]
            persist.write_changes(self, live, dead, step)
        self.step = step
        self._dirty[:] = False

    def close(self) -> None:
        """Close the file; changes since the last commit are dropped."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def build_index(self) -> float:
        """(Re)build the faiss index on the stored keys now; the seconds it took."""
        if self.index != "faiss-ivf":
            raise StoreError(f"build_index: this store uses index={self.index!r}; open it with index='faiss-ivf'")
        if len(self) < self.ann_min_entries:
            raise StoreError(f"build_index: {len(self)} entries are fewer than ann_min_entries="
                             f"{self.ann_min_entries} (below that the exact search answers)")
        self._ann_build()
        return self.build_seconds

    # ---- insert's parts -----------------------------------------------------------------------------------

    def _score(self, slots: np.ndarray, step: int) -> np.ndarray:
        """The LRFU score of `slots` at `step`."""
        age = np.maximum(step - self.atime[slots], 0)
        return self.crf[slots] * np.exp2(-self.spec.lrfu_lambda * age)

    def _recombine(self, idx: np.ndarray, dist: np.ndarray) -> int:
        close = (dist < self.spec.merge_below) & (idx >= 0)
        claimed = np.zeros(self.spec.capacity, bool)
        made = 0
        for r in np.flatnonzero(close.sum(axis=1) >= 2):
            slots, d = idx[r][close[r]], dist[r][close[r]]
            free = ~claimed[slots]
            slots, d = slots[free], d[free].astype(np.float64)
            if len(slots) < 2:
                continue
            w = np.exp(-d)
            w /= w.sum()
            key = w @ self.keys[slots]
            norm = np.linalg.norm(key)
            if norm < 1e-6:  # opposite keys cancel (only with merge_below near 4): leave them apart
                continue
            claimed[slots] = True
            atime = self.atime[slots].max()
            entry = {"ctime": self.ctime[slots].min(), "atime": atime, "access": self.access[slots].sum(),
                     "crf": self._score(slots, atime).sum()}
            value = w @ self.values[slots]
            self._delete(slots)
            self._write(slots.min(keepdims=True), key[None] / norm, value[None], **entry)
            made += 1
        self._counters["recombinations"] += made
        return made

    def _first_of_duplicates(self, keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """`rows` in order, less each row within `insert_above` of a row kept before it."""
        near = 2 - self.spec.insert_above  # d <= insert_above  <=>  cos >= 1 - insert_above/2, as 2 cos >= near
        kept = []
        for a in range(0, len(rows), _DEDUPE_ROWS):
            chunk = rows[a:a + _DEDUPE_ROWS]
            x = keys[chunk]
            keep = np.ones(len(chunk), bool)
            if kept:
                before = keys[np.concatenate(kept)]
                keep = ~np.any(2 * (x @ before.T) >= near, axis=1)
            dup = np.tril(2 * (x @ x.T) >= near, -1)  # dup[i, j]: row j comes before row i and is near it
            for i in np.flatnonzero(keep & dup.any(axis=1)):  # in order, so keep[:i] is final when row i is read
                keep[i] = not np.any(dup[i, :i] & keep[:i])
            kept.append(chunk[keep])
        return np.concatenate(kept) if kept else rows[:0]

    def _make_room(self, n: int, step: int) -> int:
        """Evict the lowest-scored entries until `n` slots are free; how many went."""
        m = n - (self.spec.capacity - len(self))
        if m <= 0:
            return 0
        live = np.flatnonzero(self.valid)
        score = self._score(live, step)
        cut = np.partition(score, m - 1)[m - 1]
        tied = np.flatnonzero(score <= cut)  # every entry that may go: order them fully (ties included)
        order = np.lexsort((live[tied], self.atime[live[tied]], score[tied]))
        self._delete(live[tied[order[:m]]])
        self._counters["evictions"] += m
        return m

    def _write(self, slots, keys, values, *, ctime, atime, access, crf) -> None:
        self.keys[slots] = keys
        self.values[slots] = values
        self.valid[slots] = True
        self.ctime[slots] = ctime
        self.atime[slots] = atime
        self.access[slots] = access
        self.crf[slots] = crf
        self._dirty[slots] = True
        self._ann_stale[slots] = True

    def _delete(self, slots) -> None:
        self.keys[slots] = 0
        self.values[slots] = 0
        self.valid[slots] = False
        for a in (self.ctime, self.atime, self.access, self.crf):
            a[slots] = 0
        self._dirty[slots] = True
        self._ann_stale[slots] = True

    # ---- search -------------------------------------------------------------------------------------------

    def _exact_query(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(q)
        idx = np.full((n, k), -1, np.int64)
        dist = np.full((n, k), np.inf, np.float32)
        live = np.flatnonzero(self.valid)
        m = len(live)
        if m == 0 or n == 0:
            return idx, dist
        full = m == self.spec.capacity
        keys = self.keys if full else self.keys[live]
        kk = min(k, m)
        step = max(1, _SCORE_BLOCK // m)
        for a in range(0, n, step):
            s = q[a:a + step] @ keys.T
            top = _top_k_columns(s, kk)
            idx[a:a + step, :kk] = top if full else live[top]
            dist[a:a + step, :kk] = np.clip(2 - 2 * np.take_along_axis(s, top, axis=1), 0, 4)
        return idx, dist

    def _ann_sync(self) -> bool:
        """Bring the faiss index up to date with the arrays; False while the store is too small for one."""
        n = len(self)
        if n < self.ann_min_entries:
            return False
        if self._ann is None or n > 2 * self._ann_trained_on:
            self._ann_build()
            return True
        stale = np.flatnonzero(self._ann_stale)
        if stale.size:
            self._ann.remove_ids(stale.astype(np.int64))
            live = stale[self.valid[stale]]
            if live.size:
                self._ann.add_with_ids(self.keys[live], live.astype(np.int64))
            self._ann_stale[:] = False
        return True

    def _ann_build(self) -> None:
        import faiss  # here: only stores that use it pay for the import

        t0 = time.perf_counter()
        live = np.flatnonzero(self.valid)
        x = self.keys[live]
        nlist = self.nlist or max(1, round(math.sqrt(len(live))))
        quantizer = faiss.IndexFlatIP(self.spec.key_dim)
        index = faiss.IndexIVFFlat(quantizer, self.spec.key_dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.add_with_ids(x, live.astype(np.int64))
        index.nprobe = min(self._nprobe, nlist)
        self._ann, self._ann_quantizer = index, quantizer  # the IVF index points into its quantizer
        self._ann_trained_on = len(live)
        self._ann_stale[:] = False
        self.build_seconds = time.perf_counter() - t0

    def _ann_query(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        ip, idx = self._ann.search(q, k)
        dist = np.where(idx >= 0, np.clip(2 - 2 * ip, 0, 4), np.inf).astype(np.float32)
        return idx.astype(np.int64), dist

    # ---- checks -------------------------------------------------------------------------------------------

    def _rows(self, name: str, x, dim: int) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != dim:
            raise StoreError(f"{name} must have shape (n, {dim}), got {x.shape}")
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise StoreError(f"{name} must be numbers, got dtype {x.dtype}")
        x = x.astype(np.float32, copy=False)
        bad = ~np.isfinite(x)
        if bad.any():
            raise StoreError(f"{name} holds {int(bad.sum())} non-finite values (first in row "
                             f"{int(np.flatnonzero(bad.any(axis=1))[0])})")
        return x

    def _unit_rows(self, name: str, x) -> np.ndarray:
        x = self._rows(name, x, self.spec.key_dim)
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        if (norm == 0).any():
            raise StoreError(f"{name} row {int(np.flatnonzero(norm[:, 0] == 0)[0])} is zero: a key needs a direction")
        return x / norm


def _top_k_columns(s: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k largest scores, largest first (ties: lower column first). Exact, and faster
    than one argpartition over long rows: the k largest lie in the k blocks of `_TOP_K_BLOCK` columns with the
    largest maxima (each of the k is some block's element at or below its maximum), so only those are ranked."""
    n, m = s.shape
    b = _TOP_K_BLOCK
    nb = m // b
    if nb <= 2 * k:
        cols = np.argpartition(-s, k - 1, axis=1)[:, :k] if k < m else np.broadcast_to(np.arange(m), (n, m))
    else:
        bmax = s[:, :nb * b].reshape(n, nb, b).max(axis=2)
        if nb * b < m:
            bmax = np.concatenate([bmax, s[:, nb * b:].max(axis=1, keepdims=True)], axis=1)
        blocks = np.argpartition(-bmax, k - 1, axis=1)[:, :k]
        cand = (blocks[:, :, None] * b + np.arange(b)).reshape(n, -1)
        inside = cand < m
        cand = np.minimum(cand, m - 1)
        cs = np.where(inside, np.take_along_axis(s, cand, axis=1), -np.inf)
        cols = np.take_along_axis(cand, np.argpartition(-cs, k - 1, axis=1)[:, :k], axis=1)
    cols = np.sort(cols, axis=1)  # column order, so the stable sort below breaks ties by column
    order = np.argsort(-np.take_along_axis(s, cols, axis=1), axis=1, kind="stable")
    return np.take_along_axis(cols, order, axis=1)


def _positive_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise StoreError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _step(step) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise StoreError(f"step must be an integer >= 0, got {step!r}")
    return int(step)
