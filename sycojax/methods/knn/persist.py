"""A kNN store's file: tables `meta(name, value)` (format, spec, step of the last commit, counters) and `entries(slot,
ctime, atime, access, crf, key, value)` behind a `SqlEngine` (`sql.py`), and the store's errors. `KNNStore` calls
these; `write_changes` is the body of `KNNStore.commit`'s one transaction.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from sycojax.methods.knn.sql import EngineError

FORMAT = "sycojax.knn.store/1"


class StoreError(Exception):
    """A store call or store file that cannot work as asked; the message is one line naming the fix."""


class StoreMismatchError(StoreError):
    """A store file written for another `StoreSpec`."""


def write_changes(store, live: np.ndarray, dead: np.ndarray, step: int) -> None:
    """Upsert the `live` slots, delete the `dead` ones and write the meta, in one transaction."""
    e = store._engine
    with e.transaction():
        e.executemany(e.sql("INSERT INTO entries (slot, ctime, atime, access, crf, key, value) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (slot) DO UPDATE SET "
                            "ctime = excluded.ctime, atime = excluded.atime, access = excluded.access, "
                            "crf = excluded.crf, key = excluded.key, value = excluded.value"),
                      entry_rows(store, live))
        e.executemany(e.sql("DELETE FROM entries WHERE slot = ?"), ((s,) for s in dead.tolist()))
        if store._commit_hook is not None:
            store._commit_hook()
        write_meta(store, step)



def open_file(store) -> None:
    """Create the tables of a new store file, or load an existing one into `store`'s arrays (checked)."""
    e = store._engine
    try:
        e.connect()
        tables = e.table_names()
        if not tables:
            with e.transaction():
                e.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
                e.execute(f"CREATE TABLE entries (slot INTEGER PRIMARY KEY, ctime INTEGER NOT NULL, atime "
                          f"INTEGER NOT NULL, access INTEGER NOT NULL, crf REAL NOT NULL, key {e.blob_type} "
                          f"NOT NULL, value {e.blob_type} NOT NULL)")
                e.executemany(e.sql("INSERT INTO meta (name, value) VALUES (?, ?)"),
                              [("format", FORMAT), ("spec", json.dumps(dataclasses.asdict(store.spec)))])
                write_meta(store, None)
            return
        if not {"meta", "entries"} <= tables:
            raise StoreError(f"{e.name} is a database but not a kNN store (no meta/entries tables); pass a new "
                             f"path")
        load(store)
    except EngineError as err:
        e.close()
        raise StoreError(str(err)) from None
    except StoreError:
        e.close()
        raise


def write_meta(store, step: int | None) -> None:
    e = store._engine
    e.executemany(e.sql("INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET "
                        "value = excluded.value"),
                  [("step", json.dumps(step)), ("counters", json.dumps(store._counters))])


def entry_rows(store, slots: np.ndarray):
    cols = (slots.tolist(), store.ctime[slots].tolist(), store.atime[slots].tolist(),
            store.access[slots].tolist(), store.crf[slots].tolist())
    for j, row in enumerate(zip(*cols)):
        s = slots[j]
        yield (*row, store.keys[s].astype("<f4").tobytes(), store.values[s].astype("<f4").tobytes())


def load(store) -> None:
    e, spec = store._engine, store.spec
    broken = f"{e.name} is not a readable kNN store"
    try:
        meta = dict(e.execute("SELECT name, value FROM meta"))
        if meta.get("format") != FORMAT:
            raise StoreError(f"{broken} (format {meta.get('format')!r}, expected {FORMAT!r}); pass a new path")
        theirs = json.loads(meta["spec"])
        ours = dataclasses.asdict(spec)
        diffs = [f"{name}: file {theirs.get(name)!r}, asked {ours.get(name)!r}"
                 for name in sorted(set(theirs) | set(ours)) if theirs.get(name) != ours.get(name)]
        if diffs:
            raise StoreMismatchError(f"{e.name} was written for another store ({'; '.join(diffs)}); pass a new "
                                     f"path, or delete the file to start this store over")
        step, counters = json.loads(meta["step"]), json.loads(meta["counters"])
        rows = e.execute("SELECT slot, ctime, atime, access, crf, key, value FROM entries")
    except (KeyError, ValueError, TypeError) as err:
        raise StoreError(f"{broken} (meta: {type(err).__name__} {err}); delete it or pass a new path") from None
    except EngineError as err:
        raise StoreError(f"{broken} ({err}); delete it or pass a new path") from None
    if rows:
        slot, ctime, atime, access, crf, key, value = zip(*rows)
        slots = np.asarray(slot, np.int64)
        for name, blobs, dim in (("key", key, spec.key_dim), ("value", value, spec.value_dim)):
            if {len(b) if isinstance(b, bytes) else -1 for b in blobs} != {4 * dim}:
                raise StoreError(f"{broken} (a {name} is not {dim} float32s); delete it or pass a new path")
        if slots.min() < 0 or slots.max() >= spec.capacity:
            raise StoreError(f"{broken} (slot outside [0, {spec.capacity})); delete it or pass a new path")
        store.keys[slots] = np.frombuffer(b"".join(key), "<f4").reshape(-1, spec.key_dim)
        store.values[slots] = np.frombuffer(b"".join(value), "<f4").reshape(-1, spec.value_dim)
        store.valid[slots] = True
        store.ctime[slots], store.atime[slots], store.access[slots] = ctime, atime, access
        store.crf[slots] = crf
    store.step = step
    store._counters.update(counters)
    store._ann_stale[:] = True
