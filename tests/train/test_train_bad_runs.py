"""Runs that cannot go well stop with one clear line and keep the last good checkpoint (issue 24, part 4):
no steps, a learning rate that is not a number, a loss that diverges, a damaged latest checkpoint."""

import glob
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import train_toy as toy

from sycojax.train import ConfigValueError, NonFiniteError, RunCheckpoints, UnreadableCheckpointError, inspection

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _truncate_step(workdir: str, step: int) -> list[str]:
    """Cut every data file of the step's trainable item to half its size (a disk filled mid-copy)."""
    files = glob.glob(os.path.join(workdir, "ckpt", str(step), "trainable", "d", "*"))
    assert files, f"no data files under step {step}"
    for f in files:
        with open(f, "r+b") as fh:
            fh.truncate(os.path.getsize(f) // 2)
    return files


@pytest.mark.parametrize(("overrides", "match"), [
    ({"train__num_steps": 0}, r"train.num_steps=0: a run needs at least one optimizer step \(--num_iter"),
    ({"train__num_steps": -3}, r"train.num_steps=-3"),
    ({"optim__lr": float("nan")}, r"optim.lr=nan: the learning rate must be a finite number"),
])
def test_a_run_that_cannot_train_is_refused_before_anything_is_written(tmp_path, overrides, match):
    num_steps = overrides.pop("train__num_steps", 4)
    with pytest.raises(ConfigValueError, match=match):
        toy.run(str(tmp_path / "run"), num_steps, **overrides)
    assert not os.path.exists(tmp_path / "run" / "ckpt")


def test_a_diverging_loss_stops_the_run_naming_the_step_and_saves_nothing_after_it(tmp_path):
    # Adam's first update moves every weight by ~lr = 1e38: step 1's loss is finite, step 2's is not.
    workdir = str(tmp_path / "run")
    with pytest.raises(NonFiniteError, match=r"training diverged at step 2: loss(?: and grad_norm)? not finite"):
        toy.run(workdir, 6, optim__lr=1e38, optim__warmup_frac=0.0, optim__schedule="constant",
                optim__clip_norm=0.0, ckpt__every=1, ckpt__async_save=False)
    ckpts = RunCheckpoints(os.path.join(workdir, "ckpt"), read_only=True)
    assert ckpts.all_steps() == [1]  # the last good step only
    ckpts.close()


def test_resume_falls_back_from_a_truncated_latest_checkpoint_and_matches_an_uninterrupted_run(tmp_path, caplog):
    straight = toy.run(str(tmp_path / "straight"), 6)
    workdir = str(tmp_path / "run")
    toy.run(workdir, 4)
    _truncate_step(workdir, 4)
    reader = inspection.CheckpointReader(workdir)
    problems = inspection.verify(reader)
    reader.close()
    assert problems and "step 4 trainable" in problems[0] and "truncated or damaged" in problems[0]

    resumed = toy.run(workdir, 6, resume=True)
    assert "checkpoint step 4 is unreadable" in caplog.text and "resuming from step 2 instead" in caplog.text
    assert glob.glob(os.path.join(workdir, "ckpt", "broken-4-*", "trainable"))  # kept for a post-mortem
    for a, b in zip(jax.tree.leaves(straight.trainable), jax.tree.leaves(resumed.trainable)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the same run, re-done from step 2


def test_resume_with_no_readable_checkpoint_refuses_with_the_fix(tmp_path):
    workdir = str(tmp_path / "run")
    toy.run(workdir, 2)
    _truncate_step(workdir, 2)
    with pytest.raises(UnreadableCheckpointError, match=r"no checkpoint in .* reads back: checkpoint step 2 is "
                                                        r"unreadable .*new --workdir"):
        toy.run(workdir, 4, resume=True)


def test_inspect_ckpt_cli_reports_a_truncated_file_instead_of_fine(tmp_path):
    workdir = str(tmp_path / "run")
    toy.run(workdir, 2)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cli = [sys.executable, os.path.join(REPO, "launch", "inspect_ckpt.py"), workdir]
    ok = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert ok.returncode == 0 and "integrity: ok" in ok.stdout, ok.stderr[-2000:]
    files = _truncate_step(workdir, 2)
    bad = subprocess.run(cli, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert bad.returncode == 1
    assert "integrity: BROKEN: step 2 trainable" in bad.stdout
    err = bad.stderr.strip().splitlines()
    assert err[-1].startswith("error: step 2 trainable") and os.path.basename(files[0]) in err[-1]
