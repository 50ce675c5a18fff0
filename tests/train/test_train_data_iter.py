"""ArrayIterator: per-epoch permutations from the seed, exact continuation from get_state()."""

import numpy as np
import pytest

from sycojax.train import ArrayIterator


def _ids(n_batches, it):
    return [next(it)["id"].tolist() for _ in range(n_batches)]


def test_epochs_are_seeded_permutations():
    arrays = {"id": np.arange(10), "x": np.arange(10) * 2.0}
    it = ArrayIterator(arrays, 3, seed=7)
    epoch0 = _ids(3, it)  # 3 batches of 3; the 10th example of the epoch's order is dropped
    assert it.get_state()["epoch"] == 1 and it.get_state()["index"] == 0
    order0 = np.random.default_rng([7, 0]).permutation(10)
    assert epoch0 == order0[:9].reshape(3, 3).tolist()
    epoch1 = _ids(3, it)
    assert epoch1 == np.random.default_rng([7, 1]).permutation(10)[:9].reshape(3, 3).tolist()
    assert epoch0 != epoch1
    batch = next(ArrayIterator(arrays, 3, seed=7))
    np.testing.assert_array_equal(batch["x"], batch["id"] * 2.0)  # rows stay aligned across keys
    assert _ids(2, ArrayIterator(arrays, 5, shuffle=False)) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_set_state_continues_exactly():
    arrays = {"id": np.arange(12)}
    reference = _ids(9, ArrayIterator(arrays, 4, seed=1))
    it = ArrayIterator(arrays, 4, seed=1)
    _ids(5, it)
    state = it.get_state()
    fresh = ArrayIterator(arrays, 4, seed=1)
    fresh.set_state(state)
    assert _ids(4, fresh) == reference[5:]


def test_set_state_rejects_other_iterator():
    state = ArrayIterator({"id": np.arange(12)}, 4, seed=1).get_state()
    with pytest.raises(ValueError, match="different iterator"):
        ArrayIterator({"id": np.arange(12)}, 4, seed=2).set_state(state)


def test_bad_inputs():
    with pytest.raises(ValueError, match="same leading dimension"):
        ArrayIterator({"a": np.zeros(4), "b": np.zeros(5)}, 2)
    with pytest.raises(ValueError, match="batch_size=9"):
        ArrayIterator({"a": np.zeros(4)}, 9)
