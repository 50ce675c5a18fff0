"""A process SIGKILLed during an async save leaves the previous checkpoint usable (issue 4, done-when 3)."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import train_toy as toy

from sycojax.train.inspection import CheckpointReader

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.slow
def test_sigkill_mid_save_keeps_previous_checkpoint(tmp_path):
    workdir, marker = tmp_path / "run", tmp_path / "saving_step_4"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "kill_worker.py"), str(workdir), str(marker)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 180
        while not marker.exists():
            assert proc.poll() is None, f"worker exited early:\n{proc.stderr.read()[-4000:]}"
            assert time.time() < deadline, "the worker never reached the save of step 4"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    ckpt = workdir / "ckpt"
    tmp_dirs = [d for d in os.listdir(ckpt) if d.startswith("4.")]
    assert tmp_dirs, f"the kill should leave step 4 half-written; found {os.listdir(ckpt)}"
    assert not (ckpt / "4").exists()
    reader = CheckpointReader(str(workdir))
    assert reader.steps == [2]
    assert reader.data_state(2)["index"] == 2
    restored = reader.load(2)
    reader.close()
    assert np.all(np.isfinite(restored["dense1"]["kernel"]))

    resumed = toy.run(str(workdir), 8, resume=True)
    full = toy.run(str(tmp_path / "full"), 8)
    assert sorted(toy.losses(resumed)) == [3, 4, 5, 6, 7, 8]
    for step, loss in toy.losses(resumed).items():
        assert loss == toy.losses(full)[step], step
    jax.tree.map(np.testing.assert_array_equal, toy.params_np(resumed), toy.params_np(full))
    assert not [d for d in os.listdir(ckpt) if "tmp" in d], "the half-written directory is cleaned up on restart"
