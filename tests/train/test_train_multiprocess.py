"""Two processes on localhost train together and match one process (issue 4, done-when 2)."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import train_toy as toy

from sycojax.train.inspection import CheckpointReader

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]),
    )
    for var in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID"):
        env.pop(var, None)
    port, workdir = _free_port(), tmp_path / "run"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                os.path.join(HERE, "multiprocess_worker.py"),
                str(port),
                str(pid),
                str(workdir),
                str(tmp_path / f"p{pid}.json"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for pid in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-4000:]
    reports = [json.loads((tmp_path / f"p{pid}.json").read_text()) for pid in range(2)]

    single = toy.run(str(tmp_path / "single"), 3)
    for pid, rep in enumerate(reports):
        assert rep["process_index"] == pid and rep["initialized_by"] == "arguments"
        assert rep["batch_devices"] == 4 and rep["batch_fully_addressable"] is False
        np.testing.assert_allclose(rep["losses"], list(toy.losses(single).values()), rtol=1e-5)
        ref = toy.params_np(single)
        for layer in ref:
            for leaf in ref[layer]:
                np.testing.assert_allclose(rep["params"][layer][leaf], ref[layer][leaf], rtol=1e-5, atol=1e-7)
    # each process fed its own half of the 8-row batch
    assert sorted(tuple(r["rows_fed"]) for r in reports) == [(0, 4), (4, 8)]
    # the checkpoint both processes wrote holds the trained parameters
    reader = CheckpointReader(str(workdir))
    assert reader.steps == [2, 3]
    saved = reader.load(3)
    reader.close()
    np.testing.assert_allclose(saved["dense1"]["kernel"], reports[0]["params"]["dense1"]["kernel"], rtol=1e-6)
