"""The kNN memory store against hand-computed expectations: lookup, insert (novelty, in-batch duplicates,
recombination, LRFU eviction), touch, input errors, and the store file (round trip, mismatched spec, garbage,
read-only, a process killed inside a commit)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sycojax.methods.knn.store import KNNStore, StoreError, StoreMismatchError, StoreSpec, _top_k_columns

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _unit(*v):
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def _angle(deg):
    return np.array([np.cos(np.radians(deg)), np.sin(np.radians(deg))])


def _spec(**kw):
    return StoreSpec(**{"key_dim": 3, "value_dim": 2, "capacity": 8, "k": 2, "owner": "test/block0/featural", **kw})


def _arrays(s):
    return {n: getattr(s, n).copy() for n in ("keys", "values", "valid", "ctime", "atime", "access", "crf")}


def test_query_returns_the_nearest_first_with_squared_l2_on_unit_keys():
    s = KNNStore(_spec(key_dim=2, capacity=6, k=3))
    s.bulk_load(np.stack([_angle(0), _angle(90), _angle(180), _angle(45)]) * 5, np.eye(4, 2), step=0)  # normalised
    np.testing.assert_allclose(np.linalg.norm(s.keys[:4], axis=1), 1, rtol=1e-6)
    before = _arrays(s)
    idx, dist = s.query([[3.0, 0.0], _angle(100)])
    np.testing.assert_array_equal(idx, [[0, 3, 1], [1, 3, 2]])
    cos = np.cos(np.radians([[0, 45, 90], [10, 55, 80]]))
    np.testing.assert_allclose(dist, 2 - 2 * cos, atol=1e-6)
    assert dist.dtype == np.float32 and idx.dtype == np.int64
    idx, dist = s.query([[1.0, 0.0]], k=6)  # 4 entries in 6 slots: the rest padded
    np.testing.assert_array_equal(idx, [[0, 3, 1, 2, -1, -1]])
    assert np.isinf(dist[0, 4:]).all()
    _, _, values = s.lookup([[1.0, 0.0]], k=5)
    np.testing.assert_array_equal(values[0], [[1, 0], [0, 0], [0, 1], [0, 0], [0, 0]])  # slot 3's value, then pad
    for name, a in before.items():  # a query records no access
        np.testing.assert_array_equal(getattr(s, name), a)


def test_exact_top_k_matches_a_full_sort():
    rng = np.random.default_rng(0)
    for m, k in [(20_000, 4), (20_000, 16), (300, 5), (5, 5), (9_000, 1)]:  # block shortcut and plain partition
        scores = rng.standard_normal((7, m)).astype(np.float32)
        np.testing.assert_array_equal(_top_k_columns(scores, k), np.argsort(-scores, axis=1, kind="stable")[:, :k])


def test_a_novel_key_is_stored_and_a_near_duplicate_is_not():
    s = KNNStore(_spec(key_dim=2))
    s.insert([_angle(0)], [[1.0, 1.0]], step=0)
    near = s.insert([_angle(20)], [[2.0, 2.0]], step=1)  # d = 2 - 2 cos 20° = 0.12 <= 1/3
    assert near == {"inserted": 0, "recombined": 0, "evicted": 0} and len(s) == 1
    far = s.insert([_angle(90)], [[3.0, 3.0]], step=2)  # d = 2 > 1/3 (the second neighbour is missing: far)
    assert far == {"inserted": 1, "recombined": 0, "evicted": 0} and len(s) == 2
    np.testing.assert_allclose(s.keys[1], _angle(90), atol=1e-7)
    np.testing.assert_array_equal(s.values[1], [3, 3])
    assert (s.ctime[1], s.atime[1], s.access[1], s.crf[1]) == (2, 2, 0, 1.0)


def test_within_one_batch_a_key_near_an_earlier_one_is_stored_once():
    s = KNNStore(_spec(key_dim=2))
    out = s.insert(np.stack([_angle(180), _angle(185), _angle(270), _angle(181)]), np.arange(8.0).reshape(4, 2), 0)
    assert out["inserted"] == 2 and s.stats()["inserts"] == 2
    np.testing.assert_allclose(s.keys[:2], [_angle(180), _angle(270)], atol=1e-7)
    np.testing.assert_array_equal(s.values[:2], [[0, 1], [4, 5]])  # the first of each pair is the one kept


def test_two_close_keys_recombine_into_one_exp_weighted_entry():
    s = KNNStore(_spec(k=3))
    a, b, c = _unit(1, 0.2, 0), _unit(1, -0.3, 0), _unit(0, 0, 1)
    s.bulk_load([a], [[1.0, 0.0]], step=1)
    s.bulk_load([b], [[0.0, 1.0]], step=3)
    s.bulk_load([c], [[5.0, 5.0]], step=0)
    s.touch([0, 0], step=5)
    s.touch([1], step=7)
    crf_a, crf_b = 2 ** -0.04 + 2, 2 ** -0.04 + 1
    np.testing.assert_allclose(s.crf[:2], [crf_a, crf_b])
    q = _unit(1, 0, 0)
    out = s.insert([q], [[9.0, 9.0]], step=10)  # a, b within 2/3 of q; q within 1/3 of a: not stored itself
    assert out == {"inserted": 0, "recombined": 1, "evicted": 0}
    assert len(s) == 2 and s.valid.tolist()[:3] == [True, False, True]
    w = np.exp(-np.array([2 - 2 * q @ a, 2 - 2 * q @ b]))
    w /= w.sum()
    np.testing.assert_allclose(s.keys[0], _unit(*(w[0] * a + w[1] * b)), atol=1e-6)
    np.testing.assert_allclose(s.values[0], [w[0], w[1]], atol=1e-6)
    assert (s.ctime[0], s.atime[0], s.access[0]) == (1, 7, 3)
    np.testing.assert_allclose(s.crf[0], crf_a * 2 ** -0.02 + crf_b)  # both scores at the merged atime 7
    assert (s.keys[1] == 0).all() and s.stats()["recombinations"] == 1
    np.testing.assert_allclose(s.keys[2], c)  # the far entry is untouched


def test_a_full_store_evicts_the_lowest_lrfu_scores():
    s = KNNStore(_spec(capacity=3, k=1))
    s.bulk_load(np.eye(3), [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]], step=0)
    s.touch([0] * 5, step=0)  # often, long ago
    s.touch([1], step=9)  # once, recently
    s.touch([2], step=2)  # once, earlier
    score = s.crf * 2.0 ** (-0.01 * (10 - s.atime))
    assert np.argsort(score).tolist() == [2, 1, 0]  # LRU would evict slot 0 first; LRFU keeps it
    out = s.insert([_unit(-1, -1, -1), _unit(-1, -1, 0.5)], [[7.0, 7.0], [8.0, 8.0]], step=10)
    assert out == {"inserted": 2, "recombined": 0, "evicted": 2}
    np.testing.assert_allclose(s.keys[0], [1, 0, 0])
    np.testing.assert_allclose(s.keys[1:], [_unit(-1, -1, -1), _unit(-1, -1, 0.5)], atol=1e-7)
    np.testing.assert_array_equal(s.values, [[0, 0], [7, 7], [8, 8]])
    assert s.stats()["evictions"] == 2 and len(s) == 3


def test_touch_counts_hits_and_skips_padding():
    s = KNNStore(_spec())
    s.bulk_load(np.eye(3), np.zeros((3, 2)), step=0)
    s.touch(np.array([[0, -1], [0, 2]]), step=4)
    np.testing.assert_array_equal(s.access[:3], [2, 0, 1])
    np.testing.assert_array_equal(s.atime[:3], [4, 0, 4])
    np.testing.assert_allclose(s.crf[:3], [2 ** -0.04 + 2, 1, 2 ** -0.04 + 1])
    s.touch([0], step=2)  # an older step never moves atime back
    assert s.atime[0] == 4 and s.stats()["hits"] == 4
    for idx, match in [([5], "slot 5 holds no entry"), ([8], r"outside \[-1, 8\)"), ([0.0], "must be integers")]:
        with pytest.raises(StoreError, match=match):
            s.touch(idx, step=5)


def test_one_step_larger_than_the_capacity_names_the_fix():
    s = KNNStore(_spec(capacity=4, k=1))
    with pytest.raises(StoreError, match=r"capacity 4 is smaller than one step's 5 inserts; raise --capacity to at "
                                         r"least 5"):
        s.insert(np.eye(3)[[0, 1, 2, 0, 1]], np.zeros((5, 2)), step=0)


@pytest.mark.parametrize("keys, values, match", [
    (np.ones((2, 4)), np.ones((2, 2)), r"keys must have shape \(n, 3\), got \(2, 4\)"),
    (np.ones(3), np.ones((1, 2)), r"keys must have shape \(n, 3\), got \(3,\)"),
    (np.ones((2, 3)), np.ones((2, 5)), r"values must have shape \(n, 2\), got \(2, 5\)"),
    (np.ones((2, 3)), np.ones((3, 2)), "2 keys but 3 values"),
    ([[1, 0, np.nan], [1, 1, 1]], np.ones((2, 2)), r"keys holds 1 non-finite values \(first in row 0\)"),
    (np.ones((2, 3)), [[1, 1], [np.inf, 0]], r"values holds 1 non-finite values \(first in row 1\)"),
    ([[1, 0, 0], [0, 0, 0]], np.ones((2, 2)), "keys row 1 is zero"),
    (np.array([["a", "b", "c"]]), np.ones((1, 2)), "keys must be numbers"),
])
def test_bad_inputs_get_one_clear_error(keys, values, match):
    s = KNNStore(_spec())
    with pytest.raises(StoreError, match=match):
        s.insert(keys, values, step=0)
    with pytest.raises(StoreError, match=match):
        s.bulk_load(keys, values, step=0)
    assert len(s) == 0


def test_bad_specs_and_steps():
    with pytest.raises(StoreError, match="StoreSpec.owner must name"):
        StoreSpec(3, 2, 8, 2, "")
    with pytest.raises(StoreError, match="StoreSpec.capacity must be a positive integer"):
        StoreSpec(3, 2, 0, 2, "x")
    with pytest.raises(StoreError, match="index must be one of exact, faiss-ivf"):
        KNNStore(_spec(), index="hnsw")
    with pytest.raises(StoreError, match="step must be an integer >= 0"):
        KNNStore(_spec()).insert(np.eye(3), np.zeros((3, 2)), step=-1)


def _filled(spec, path=None):
    s = KNNStore(spec, path)
    s.insert(np.eye(3), np.arange(6.0).reshape(3, 2), step=1)
    s.touch([0, 0, 2], step=2)
    return s


def test_a_committed_store_reopens_identical(tmp_path):
    path = tmp_path / "sub" / "store.db"
    s = _filled(_spec(), path)
    s.commit(2)
    s.insert([_unit(*_angle(40), 0), _unit(-1, -1, -1)], [[7.0, 7.0], [8.0, 8.0]], step=3)
    s.insert([_unit(*_angle(20), 0)], [[9.0, 9.0]], step=4)  # recombines slot 0 and the 40° key: a slot deleted
    assert s.stats()["recombinations"] == 1
    s.commit(4)
    s.insert([_unit(0, -1, 0)], [[1.0, 1.0]], step=5)  # not committed: dropped at close
    want, want_stats = _arrays(s), s.stats()
    s.close()
    r = KNNStore.open(path, _spec())
    assert r.step == 4 and r.stats() == {**want_stats, "inserts": want_stats["inserts"] - 1, "entries": len(r)}
    assert len(r) == len(s) - 1
    s_committed = _filled(_spec())
    s_committed.insert([_unit(*_angle(40), 0), _unit(-1, -1, -1)], [[7.0, 7.0], [8.0, 8.0]], step=3)
    s_committed.insert([_unit(*_angle(20), 0)], [[9.0, 9.0]], step=4)
    for name, a in _arrays(s_committed).items():
        np.testing.assert_array_equal(getattr(r, name), a, err_msg=name)
    assert not np.array_equal(want["valid"], r.valid)  # the uncommitted insert is not there
    r.close()
    assert KNNStore.open(path, _spec()).step == 4


def test_a_file_for_another_spec_is_refused_and_kept(tmp_path):
    path = tmp_path / "store.db"
    s = _filled(_spec(), path)
    s.commit(2)
    s.close()
    before = path.read_bytes()
    with pytest.raises(StoreMismatchError, match=r"store.db was written for another store \(capacity: file 8, asked "
                                                 r"16; owner: file 'test/block0/featural', asked 'other'\); pass a "
                                                 r"new path, or delete the file"):
        KNNStore.open(path, _spec(capacity=16, owner="other"))
    with pytest.raises(StoreMismatchError, match=r"merge_below: file 0.666\d*, asked 0.5"):
        KNNStore.open(path, _spec(merge_below=0.5))
    assert path.read_bytes() == before
    assert len(KNNStore.open(path, _spec())) == 3


def test_a_garbage_file_is_refused_and_kept(tmp_path):
    path = tmp_path / "store.db"
    path.write_bytes(b"not a database\n" * 1000)
    with pytest.raises(StoreError, match=r"store.db is not a SQLite database \(file is not a database\); delete it "
                                         r"or pass a new path"):
        KNNStore.open(path, _spec())
    assert path.read_bytes() == b"not a database\n" * 1000 and sorted(os.listdir(tmp_path)) == ["store.db"]
    other = tmp_path / "other.db"
    import sqlite3

    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="other.db is a database but not a kNN store"):
        KNNStore.open(other, _spec())


def test_a_read_only_file_or_directory_is_refused_at_open(tmp_path):
    path = tmp_path / "store.db"
    s = _filled(_spec(), path)
    s.commit(2)
    s.close()
    before = path.read_bytes()
    os.chmod(path, 0o444)
    try:
        if os.access(path, os.W_OK):
            pytest.skip("running as root: chmod does not make a file read-only")
        with pytest.raises(StoreError, match=r"store.db cannot be written \(read-only file\)"):
            KNNStore.open(path, _spec())
    finally:
        os.chmod(path, 0o644)
    os.chmod(tmp_path, 0o555)
    try:
        assert not os.access(tmp_path, os.W_OK)
        with pytest.raises(StoreError, match=r"store.db cannot be written: its directory .* is read-only"):
            KNNStore.open(path, _spec())
    finally:
        os.chmod(tmp_path, 0o755)
    assert path.read_bytes() == before


_CHILD = """
import sys, time
import numpy as np
from sycojax.methods.knn.store import KNNStore, StoreSpec

path, flag = sys.argv[1:]
spec = StoreSpec(key_dim=64, value_dim=64, capacity=20_000, k=2, owner="kill-test")
s = KNNStore.open(path, spec)
rng = np.random.default_rng(0)
s.bulk_load(rng.standard_normal((100, 64)), rng.standard_normal((100, 64)), step=1)
s.commit(1)
print("committed 1", flush=True)
s.bulk_load(rng.standard_normal((10_000, 64)), rng.standard_normal((10_000, 64)), step=2)

def hook():  # inside the transaction: 10k entries written (spilled into the -wal), the meta not yet
    open(flag, "w").close()
    time.sleep(120)

s._commit_hook = hook
s.commit(2)
print("committed 2", flush=True)
"""


def test_a_process_killed_inside_a_commit_leaves_the_last_committed_batch(tmp_path):
    path, flag = tmp_path / "store.db", tmp_path / "inside"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path), str(flag)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not flag.exists():
            assert child.poll() is None, child.stderr.read()
            assert time.monotonic() < deadline, "the child never reached its second commit"
            time.sleep(0.02)
        wal = os.path.getsize(str(path) + "-wal")
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        out = child.communicate()[0]
    assert child.returncode == -signal.SIGKILL and out == "committed 1\n"
    assert wal > 2**21  # batch 2's pages were on disk, uncommitted, when the process died
    spec = StoreSpec(key_dim=64, value_dim=64, capacity=20_000, k=2, owner="kill-test")
    r = KNNStore.open(path, spec)
    rng = np.random.default_rng(0)
    want = KNNStore(spec)
    want.bulk_load(rng.standard_normal((100, 64)), rng.standard_normal((100, 64)), step=1)
    assert r.step == 1 and len(r) == 100 and r.stats() == want.stats()
    for name, a in _arrays(want).items():
        np.testing.assert_array_equal(getattr(r, name), a, err_msg=name)


def test_faiss_ivf_recall_against_exact_and_it_follows_inserts():
    rng = np.random.default_rng(0)
    spec = StoreSpec(key_dim=16, value_dim=2, capacity=6000, k=10, owner="ivf-test")
    s = KNNStore(spec, index="faiss-ivf", nlist=50, nprobe=25, ann_min_entries=1000)
    s.bulk_load(rng.standard_normal((5000, 16)), rng.standard_normal((5000, 2)), step=0)
    s.build_index()
    q = rng.standard_normal((200, 16))
    ann, dist = s.query(q)
    exact, exact_dist = s.query(q, exact=True)
    recall = np.mean([len(set(a) & set(e)) / spec.k for a, e in zip(ann, exact)])
    assert recall >= 0.9, recall
    hit = ann == exact
    np.testing.assert_allclose(dist[hit], exact_dist[hit], atol=1e-5)
    new = rng.standard_normal((50, 16))
    out = s.insert(new, rng.standard_normal((50, 2)), step=1)  # recombines and inserts: slots deleted and reused
    assert out["inserted"] > 0 and out["recombined"] > 0
    idx, dist = s.query(new[:5], k=3)
    assert s.valid[idx].all()  # no deleted slot comes back from the index
    s.nprobe = 50  # every list: exact
    np.testing.assert_array_equal(s.query(q)[0], s.query(q, exact=True)[0])
