"""The one training loop of sycojax: mesh, shardings, optax, Orbax checkpoints, metrics.

    from sycojax.train import train, make_mesh, ArrayIterator, default_config
    result = train(loss_fn, trainable, frozen, data, cfg, workdir, metadata={...})

See `sycojax.train.loop` for the contract a method follows, `sycojax.train.config` for the config
sections, `sycojax.train.sharding` for the mesh and the logical-axis rules,
`sycojax.train.distributed` for multi-host start-up, `sycojax.train.checkpoint` for the on-disk layout.
"""

from sycojax.train.checkpoint import RunCheckpoints
from sycojax.train.config import (
    ConfigKeyError,
    check_overrides,
    default_config,
    parse_flags,
    resolve_config,
)
from sycojax.train.data_iter import ArrayIterator
from sycojax.train.distributed import maybe_initialize
from sycojax.train.loop import TrainResult, count_tokens, train
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
    "RunCheckpoints",
    "TrainResult",
    "cast_floating",
    "check_overrides",
    "compute_dtype",
    "count_tokens",
    "default_config",
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
