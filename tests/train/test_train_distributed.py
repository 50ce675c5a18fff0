"""Where maybe_initialize takes its settings from (the two-process run is test_train_multiprocess.py)."""

import pytest

from sycojax.train import distributed


@pytest.fixture
def clean_env(monkeypatch):
    for var in (
        "JAX_COORDINATOR_ADDRESS",
        "JAX_NUM_PROCESSES",
        "JAX_PROCESS_ID",
        "SLURM_JOB_ID",
        "SLURM_NTASKS",
        "SLURM_NPROCS",
        "OMPI_COMM_WORLD_SIZE",
    ):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_detected_cluster(clean_env):
    assert distributed.detected_cluster() is None
    clean_env.setenv("SLURM_JOB_ID", "17")
    clean_env.setenv("SLURM_NTASKS", "1")
    assert distributed.detected_cluster() is None  # a one-task SLURM job is a single process
    clean_env.setenv("SLURM_NTASKS", "4")
    assert distributed.detected_cluster() == "slurm"
    clean_env.delenv("SLURM_JOB_ID")
    clean_env.setenv("OMPI_COMM_WORLD_SIZE", "2")
    assert distributed.detected_cluster() == "openmpi"


def test_single_process_is_a_no_op(clean_env):
    calls = []
    clean_env.setattr(distributed.jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    info = distributed.maybe_initialize()
    assert info.initialized_by == "single-process" and info.process_count == 1 and calls == []


def test_settings_from_arguments_then_environment(clean_env):
    calls = []
    clean_env.setattr(distributed.jax.distributed, "initialize", lambda *a, **k: calls.append(k))
    clean_env.setattr(distributed.jax.distributed, "is_initialized", lambda: False)
    assert distributed.maybe_initialize("10.0.0.1:1234", 2, 1).initialized_by == "arguments"
    clean_env.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.2:99")
    clean_env.setenv("JAX_NUM_PROCESSES", "8")
    clean_env.setenv("JAX_PROCESS_ID", "3")
    assert distributed.maybe_initialize().initialized_by == "environment"
    clean_env.delenv("JAX_COORDINATOR_ADDRESS")
    clean_env.setenv("SLURM_JOB_ID", "5")
    clean_env.setenv("SLURM_NTASKS", "2")
    assert distributed.maybe_initialize().initialized_by == "slurm"
    assert calls == [
        {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1},
        {"coordinator_address": "10.0.0.2:99", "num_processes": 8, "process_id": 3},
        {},
    ]
