"""Bad input to the kNN distillation ends in one clear line, before anything is computed, and changes no file:
a block out of range, a capacity below one step's inserts, a store file from another model or shape, a
corrupted or read-only store file."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sycojax.methods.knn.run import KNNError, train_run
from sycojax.methods.knn.store import KNNStore, StoreSpec

ROOT = Path(__file__).resolve().parents[2]


def _config(workdir):
    spec = importlib.util.spec_from_file_location("knn_cfg", ROOT / "configs/knn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.workdir = str(workdir)
    c.method.variants = "featural"
    return c


def test_block_out_of_range_is_one_line_from_the_launch(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "launch/distill_knn.py"), f"--config.workdir={tmp_path / 'w'}",
                          "--config.method.blocks=12,30"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env=dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1"), check=False)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr[-2000:]
    assert "config.method.blocks='12,30': the model has blocks 0..29" in lines[0]
    assert not (tmp_path / "w").exists()


def test_capacity_below_one_steps_inserts(tmp_path):
    c = _config(tmp_path / "w")
    c.method.capacity = 100
    with pytest.raises(KNNError, match=r"capacity=100 is smaller than one step's inserts \(batch 8 x 128 tokens\)"):
        train_run(c)


def _existing_store(tmp_path, **spec):
    d = tmp_path / "w" / "featural"
    d.mkdir(parents=True)
    path = d / "store26.sqlite"
    if spec:
        s = KNNStore.open(str(path), StoreSpec(**spec))
        s.commit(3)
        s.close()
    return path


@pytest.mark.parametrize("case", ["other model", "other shape", "corrupted", "read-only"])
def test_a_store_file_that_cannot_serve_this_run(tmp_path, case):
    if case == "other model":
        path = _existing_store(tmp_path, key_dim=128, value_dim=576, capacity=32768, k=16, owner="EleutherAI/pythia/block26")
        match = "owner"
    elif case == "other shape":
        path = _existing_store(tmp_path, key_dim=64, value_dim=576, capacity=32768, k=16, owner="x")
        match = "key_dim"
    elif case == "corrupted":
        path = _existing_store(tmp_path)
        path.write_bytes(b"this is not a database" * 100)
        match = "store26.sqlite"
    else:
        path = _existing_store(tmp_path, key_dim=128, value_dim=576, capacity=32768, k=16, owner="x")
        path.chmod(0o444)
        if os.access(path, os.W_OK):
            pytest.skip("running as a user that can write a read-only file (root)")
        match = "store26.sqlite"
    before = path.read_bytes()
    with pytest.raises(KNNError, match=match) as e:
        train_run(_config(tmp_path / "w"), resume=True)
    assert "\n" not in str(e.value)
    assert path.read_bytes() == before
