"""Multi-host start-up: JAX's own distributed runtime, from flags or the usual environment.

Call `maybe_initialize(...)` at the top of a launch's `main`, BEFORE anything touches a JAX device.
After it, `jax.devices()` lists the devices of every process, `jax.process_index()` is this
process, and the training loop does the rest (one mesh over all devices; each process feeds the
rows of the global batch that live on its devices).

Where the three settings come from, first match wins:
  1. the arguments (a launch passes its `--coordinator_address/--num_processes/--process_id` flags);
  2. `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID` in the environment;
  3. a cluster JAX detects by itself: SLURM (`srun` with more than one task) or Open MPI
     (`mpirun -n N`): then `jax.distributed.initialize()` reads the job's environment.
Otherwise this is a single-process run and nothing is initialized.
"""

from __future__ import annotations

import dataclasses
import os

import jax
from absl import flags, logging


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    process_index: int
    process_count: int
    local_devices: int
    global_devices: int
    initialized_by: str  # "arguments" | "environment" | "slurm" | "openmpi" | "already" | "single-process"


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def detected_cluster() -> str | None:
    """ "slurm" or "openmpi" when this process is one task of a multi-task job, else None."""
    if "SLURM_JOB_ID" in os.environ and (_env_int("SLURM_NTASKS") or _env_int("SLURM_NPROCS") or 1) > 1:
        return "slurm"
    if (_env_int("OMPI_COMM_WORLD_SIZE") or 1) > 1:
        return "openmpi"
    return None


def maybe_initialize(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> ProcessInfo:
    """Initialize `jax.distributed` when this run spans several processes; a no-op otherwise.

    `coordinator` is "host:port" of process 0 (any free port; every process passes the same value).
    Idempotent: a second call reports the existing set-up.
    """
    source = "arguments" if coordinator else "environment"
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    if jax.distributed.is_initialized():
        how = "already"
    elif coordinator:
        how = source
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    elif (cluster := detected_cluster()) is not None:
        how = cluster
        jax.distributed.initialize()
    else:
        how = "single-process"
    info = ProcessInfo(
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        local_devices=jax.local_device_count(),
        global_devices=jax.device_count(),
        initialized_by=how,
    )
    logging.info("distributed: %s", info)
    return info


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Define `--coordinator_address`, `--num_processes`, `--process_id` (idempotent) for a launch."""
    if "coordinator_address" in flag_values:
        return
    flags.DEFINE_string(
        "coordinator_address", None, "host:port of process 0 for multi-host runs", flag_values=flag_values
    )
    flags.DEFINE_integer("num_processes", None, "total number of processes (multi-host)", flag_values=flag_values)
    flags.DEFINE_integer("process_id", None, "index of this process in [0, num_processes)", flag_values=flag_values)


def maybe_initialize_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> ProcessInfo:
    """`maybe_initialize` with the values of the flags from `define_flags`."""
    return maybe_initialize(flag_values.coordinator_address, flag_values.num_processes, flag_values.process_id)
