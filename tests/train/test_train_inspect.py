"""launch/inspect_ckpt.py and sycojax.train.inspection (issue 4, done-when 4)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import train_toy as toy
from safetensors.numpy import load_file

from sycojax.train import inspection

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = os.path.join(REPO, "launch", "inspect_ckpt.py")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return toy.run(str(tmp_path_factory.mktemp("inspect") / "run"), 4)


def _cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, CLI, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_cli_prints_steps_tree_metadata_config(run):
    proc = _cli(run.workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "steps: [2, 4]" in out
    lines = [line.split() for line in out.splitlines()]
    assert ["dense1.kernel", "(6,", "16)", "float32", "384"] in lines
    assert ["dense2.bias", "(2,)", "float32", "8"] in lines
    assert "dense1: 112 params, 448 bytes" in out and "total: 146 params, 584 bytes" in out
    assert '"base_model": "toy-mlp"' in out and '"base_hash": "0123abcd"' in out
    assert '"num_steps": 4' in out


def test_cli_export_safetensors(run, tmp_path):
    path = tmp_path / "adapter.safetensors"
    proc = _cli(run.workdir, f"--export={path}", "--step=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    tensors = load_file(str(path))
    reader = inspection.CheckpointReader(run.workdir)
    step2 = reader.load(2)
    reader.close()
    assert set(tensors) == {"dense1.kernel", "dense1.bias", "dense2.kernel", "dense2.bias"}
    np.testing.assert_array_equal(tensors["dense1.kernel"], step2["dense1"]["kernel"])


def test_cli_on_a_non_checkpoint_dir(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    proc = _cli(str(tmp_path))
    assert proc.returncode == 1
    assert "is not a sycojax checkpoint directory" in proc.stderr
    assert "expected an Orbax CheckpointManager directory" in proc.stderr and "notes.txt" in proc.stderr
    with pytest.raises(inspection.NotACheckpointError, match="does not exist"):
        inspection.CheckpointReader(str(tmp_path / "missing"))


def test_export_npz_and_diff(run, tmp_path):
    reader = inspection.CheckpointReader(run.ckpt_dir)  # the ckpt/ directory itself works too
    assert reader.steps == [2, 4]
    path = inspection.export(reader, str(tmp_path / "latest.npz"))
    with np.load(path) as npz:
        final = toy.params_np(run)
        np.testing.assert_array_equal(npz["dense2.kernel"], final["dense2"]["kernel"])
    changes = inspection.diff_steps(reader, 2, 4)
    a, b = reader.load(2), reader.load(4)
    assert changes["dense1.kernel"] == pytest.approx(
        float(np.max(np.abs(b["dense1"]["kernel"] - a["dense1"]["kernel"])))
    )
    assert all(v > 0 for v in changes.values())
    with pytest.raises(ValueError, match="must end with"):
        inspection.export(reader, str(tmp_path / "x.pt"))
    reader.close()
