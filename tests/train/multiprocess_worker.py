"""One of two processes of test_train_multiprocess.py: argv = port, process_id, workdir, out.json.

Each process has 2 simulated CPU devices; together they form one 4-device data-parallel mesh,
train the toy problem 3 steps (checkpointing through Orbax from both processes) and report.
"""

import json
import sys

port, pid, workdir, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")

from sycojax.train import ArrayIterator, maybe_initialize
from sycojax.train.sharding import batch_sharding, make_mesh, process_rows

info = maybe_initialize(coordinator=f"localhost:{port}", num_processes=2, process_id=pid)
assert info.process_count == 2 and info.global_devices == 4 and info.local_devices == 2, info

import numpy as np
import train_toy as toy

res = toy.run(workdir, 3, data=ArrayIterator(toy.arrays(), 8, seed=3))
mesh = make_mesh({"data": -1})
rows = process_rows(batch_sharding(mesh), (1, 8, toy.D_IN), dim=1)
report = {
    "process_index": info.process_index,
    "initialized_by": info.initialized_by,
    "losses": [r["loss"] for r in res.history if "loss" in r],
    "params": jax.tree.map(lambda x: np.asarray(x.addressable_data(0)).tolist(), res.trainable),
    "batch_devices": len(res.batch_sharding.device_set),
    "batch_fully_addressable": res.batch_sharding.is_fully_addressable,
    "rows_fed": [rows.start, rows.stop],
}
with open(out, "w") as f:
    json.dump(report, f)
