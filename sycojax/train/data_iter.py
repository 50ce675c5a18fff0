"""A deterministic, checkpointable iterator over in-memory arrays.

The training loop's data contract (any object that follows it works, e.g. a `grain` iterator
wrapped to return JSON state)::

    batch = next(data)      # dict[str, np.ndarray], every array with leading dim = GLOBAL batch size
    state = data.get_state()   # JSON-able dict, saved with every checkpoint
    data.set_state(state)      # continue exactly after the batch that produced `state`

Every process iterates the SAME global stream (same arrays, same seed) and the loop keeps only the
rows that belong to its devices, so no per-process sharding logic lives in the data code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


class ArrayIterator:
    """Epochs over `arrays` (dict of equal-length arrays) in batches of `batch_size` rows, forever.

    Epoch `e` visits the examples in the order `permutation_e = default_rng([seed, e]).permutation(N)`
    (or `0..N-1` when `shuffle=False`); batch `i` of the epoch is rows `permutation_e[i*bs:(i+1)*bs]`.
    The last `N mod bs` examples of each epoch's order are dropped so every batch has the same shape
    (one compiled step). The state is `{"epoch": e, "index": i}` = the next batch to produce, plus
    the fingerprint (N, batch_size, seed, shuffle) that `set_state` checks.
    """

    def __init__(self, arrays: Mapping[str, Any], batch_size: int, seed: int = 0, shuffle: bool = True):
        if not arrays:
            raise ValueError("ArrayIterator needs at least one array")
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        lengths = {k: v.shape[0] if v.ndim else None for k, v in self.arrays.items()}
        n = next(iter(lengths.values()))
        if n is None or any(length != n for length in lengths.values()):
            raise ValueError(f"all arrays need the same leading dimension (the example axis); got {lengths}")
        if not 0 < batch_size <= n:
            raise ValueError(f"batch_size={batch_size} must be in [1, number of examples={n}]")
        self.num_examples = n
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.batches_per_epoch = n // batch_size
        self.epoch = 0
        self.index = 0
        self._order_epoch = -1
        self._order = None

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            n = self.num_examples
            self._order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            self._order_epoch = epoch
        return self._order

    def __iter__(self) -> ArrayIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rows = self._epoch_order(self.epoch)[self.index * self.batch_size : (self.index + 1) * self.batch_size]
        self.index += 1
        if self.index == self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        return {k: v[rows] for k, v in self.arrays.items()}

    def _fingerprint(self) -> dict[str, Any]:
        return {
            "num_examples": self.num_examples,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
        }

    def get_state(self) -> dict[str, Any]:
        return dict(epoch=self.epoch, index=self.index, **self._fingerprint())

    def set_state(self, state: Mapping[str, Any]) -> None:
        mine = self._fingerprint()
        theirs = {k: state.get(k) for k in mine}
        if theirs != mine:
            raise ValueError(
                f"data state was saved by a different iterator: saved {theirs}, this one {mine}; "
                "resume with the same data, batch size and seed, or start a new workdir"
            )
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
