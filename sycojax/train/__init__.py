"""The one training loop of sycojax: mesh, shardings, optax, Orbax checkpoints, metrics.

    from sycojax.train import train, make_mesh, ArrayIterator, default_config
    result = train(loss_fn, trainable, frozen, data, cfg, workdir, metadata={...})

See `sycojax.train.loop` for the contract a method follows, `sycojax.train.config` for the config
sections, `sycojax.train.sharding` for the mesh and the logical-axis rules,
`sycojax.train.distributed` for multi-host start-up, `sycojax.train.checkpoint` for the on-disk layout.
"""

from sycojax.train.checkpoint import RunCheckpoints, UnreadableCheckpointError
from sycojax.train.config import (
    ConfigKeyError,
    ConfigValueError,
    check_overrides,
    check_values,
    default_config,
    define_config_flag,
    parse_flags,
    resolve_config,
)
from sycojax.train.data_iter import ArrayIterator
from sycojax.train.distributed import maybe_initialize
from sycojax.train.loop import NonFiniteError, TrainResult, count_tokens, train
from sycojax.train.optim import make_optimizer, make_schedule
from sycojax.train.sharding import (
    LOGICAL_TO_MESH,
    MESH_AXES,
    PARAM_RULES,
    make_mesh,
    shard_batch,
    tree_shardings,
)
from sycojax.train.step import cast_floating, compute_dtype, make_train_step

__all__ = [
    "LOGICAL_TO_MESH",
    "MESH_AXES",
    "PARAM_RULES",
    "ArrayIterator",
    "ConfigKeyError",
    "ConfigValueError",
    "NonFiniteError",
    "RunCheckpoints",
    "TrainResult",
    "UnreadableCheckpointError",
    "cast_floating",
    "check_overrides",
    "check_values",
    "compute_dtype",
    "count_tokens",
    "default_config",
    "define_config_flag",
    "make_mesh",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "maybe_initialize",
    "parse_flags",
    "resolve_config",
    "shard_batch",
    "train",
    "tree_shardings",
]
