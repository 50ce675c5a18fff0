"""Device mesh, logical axis rules, and where every array of a training step lives.

One mesh with three named axes, `("data", "fsdp", "tensor")`, built by `jax.make_mesh` from the
`mesh` config section. Parameters are placed in two table look-ups (the MaxText / Flax "logical
axis" pattern), so FSDP or tensor parallelism is a config change, not a code change:

1. `PARAM_RULES`: (regex on the leaf's path "model/layers/self_attn/q_proj/weight", logical axis
   name per dimension). First rule whose regex matches (`re.search`) AND whose length equals the
   leaf's rank wins. A leaf no rule matches is replicated.
2. `LOGICAL_TO_MESH`: logical axis name -> mesh axis (or axes, or None = replicated).

With the default mesh (`fsdp=1, tensor=1`) every parameter is replicated and the batch is split
over `data`. Set `mesh.fsdp=N` to shard the `embed` dimension of the big matrices over N devices,
`mesh.tensor=M` for heads / MLP / vocab. A dimension not divisible by its mesh axes' size stays
replicated (logged once), so tiny test trees work on any mesh.

The batch: the loop reshapes the global batch `(B, ...)` to `(grad_accum, B // grad_accum, ...)`
(micro-batch `k` = rows `k, k + A, k + 2A, ...`, so every micro-batch is spread over all devices)
and shards dimension 1 over `("data", "fsdp")`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axes. "layers" (the stacked-layer axis of sycojax param trees) is never split.
LOGICAL_TO_MESH: dict[str, str | tuple[str, ...] | None] = {
    "batch": BATCH_AXES,
    "embed": "fsdp",
    "vocab": "tensor",
    "heads": "tensor",
    "mlp": "tensor",
    "layers": None,
}

# (path regex, logical axes) for the Hugging-Face-named trees of sycojax.models (weights are (out, in),
# layers stacked first). LoRA / memory-token / other adapter leaves match none and are replicated
# unless a method passes its own rules.
PARAM_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"(embed_tokens|embed_in|embed_out|lm_head)/weight$", ("vocab", "embed")),
    (r"layers/.*(q_proj|k_proj|v_proj|query_key_value)/weight$", ("layers", "heads", "embed")),
    (r"layers/.*(o_proj|attention/dense)/weight$", ("layers", "embed", "heads")),
    (r"layers/.*(gate_proj|up_proj|dense_h_to_4h)/weight$", ("layers", "mlp", "embed")),
    (r"layers/.*(down_proj|dense_4h_to_h)/weight$", ("layers", "embed", "mlp")),
)

Rules = Sequence[tuple[str, Sequence[str | None]]]


def make_mesh(
    mesh_cfg: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None
) -> jax.sharding.Mesh:
    """`jax.make_mesh((data, fsdp, tensor), MESH_AXES)` over all devices (of every process).

    One entry may be -1 ("the rest"); the product must divide the device count. A product smaller
    than the device count uses the first devices (a warning is logged). Axis types are `Auto`: the
    compiler propagates shardings inside the step from the ones fixed at the jit boundary.
    """
    mesh_cfg = dict(mesh_cfg or {})
    devices = list(devices if devices is not None else jax.devices())
    sizes = [int(mesh_cfg.get(a, -1 if a == "data" else 1)) for a in MESH_AXES]
    unknown = [k for k in mesh_cfg if k not in MESH_AXES]
    if unknown:
        raise ValueError(f"unknown mesh axes {unknown}; the mesh axes are {MESH_AXES}")
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(
                f"{len(devices)} devices are not divisible by the fixed mesh axes {dict(zip(MESH_AXES, sizes))}"
            )
        sizes[sizes.index(-1)] = len(devices) // known
    total = math.prod(sizes)
    if total > len(devices) or len(devices) % total:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {total} devices, which must divide the {len(devices)} available"
        )
    if total < len(devices):
        logging.warning("mesh %s uses %d of %d devices", dict(zip(MESH_AXES, sizes)), total, len(devices))
    axis_types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=axis_types, devices=devices[:total])


def path_str(path: Sequence[Any]) -> str:
    """A tree path as "a/b/0/c" (dict keys, attribute names and sequence indices joined by '/')."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def logical_axes(path: str, ndim: int, rules: Rules = PARAM_RULES) -> tuple[str | None, ...]:
    """The logical axis names of a leaf: the first rule matching `path` with `ndim` entries; else all None."""
    for pattern, axes in rules:
        if len(axes) == ndim and re.search(pattern, path):
            return tuple(axes)
    return (None,) * ndim


def logical_to_spec(
    axes: Sequence[str | None],
    shape: Sequence[int],
    mesh: jax.sharding.Mesh,
    logical_to_mesh: Mapping[str, Any] = LOGICAL_TO_MESH,
) -> P:
    """PartitionSpec for one array: each logical axis -> its mesh axes; size-1 or non-dividing axes dropped."""
    spec, used = [], set()
    for name, dim in zip(axes, shape):
        target = logical_to_mesh.get(name) if name is not None else None
        mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
        mesh_axes = tuple(a for a in mesh_axes if mesh.shape[a] > 1 and a not in used)
        size = math.prod(mesh.shape[a] for a in mesh_axes)
        if mesh_axes and dim % size:
            logging.log_first_n(
                logging.WARNING, "dim %d (%s) not divisible by mesh axes %s: replicated", 10, dim, name, mesh_axes
            )
            mesh_axes = ()
        used.update(mesh_axes)
        spec.append(mesh_axes[0] if len(mesh_axes) == 1 else (mesh_axes or None))
    return P(*spec)


def tree_shardings(tree: Any, mesh: jax.sharding.Mesh, rules: Rules = PARAM_RULES) -> Any:
    """NamedSharding for every leaf of a parameter tree (same structure as `tree`)."""

    def one(path, leaf):
        shape = np.shape(leaf)
        return NamedSharding(mesh, logical_to_spec(logical_axes(path_str(path), len(shape), rules), shape, mesh))

    return jax.tree_util.tree_map_with_path(one, tree)


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Sharding of a `(grad_accum, micro_batch, ...)` batch leaf: micro-batch dim over data x fsdp."""
    return NamedSharding(mesh, P(None, BATCH_AXES))


def data_parallel_size(mesh: jax.sharding.Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def to_microbatches(batch: Mapping[str, np.ndarray], grad_accum: int) -> dict[str, np.ndarray]:
    """`(B, ...) -> (A, B // A, ...)` with micro-batch k = rows k, k+A, k+2A, ... (host-side numpy)."""
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        b = v.shape[0]
        out[k] = v.reshape(b // grad_accum, grad_accum, *v.shape[1:]).swapaxes(0, 1)
    return out


def process_rows(sharding: NamedSharding, global_shape: tuple[int, ...], dim: int) -> slice:
    """The contiguous range of dimension `dim` that this process's devices hold."""
    pid = jax.process_index()
    ranges = set()
    for device, index in sharding.devices_indices_map(global_shape).items():
        if device.process_index == pid:
            s = index[dim]
            ranges.add((s.start or 0, global_shape[dim] if s.stop is None else s.stop))
    ranges = sorted(ranges)
    start, stop = ranges[0][0], ranges[-1][1]
    covered = sum(b - a for a, b in ranges)
    if covered != stop - start:
        raise ValueError(
            f"process {pid} holds the non-contiguous rows {ranges} of the batch; build the mesh with "
            "sycojax.train.make_mesh so each process's devices are adjacent on the data axes"
        )
    return slice(start, stop)


def shard_batch(micro: Mapping[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
    """Global `jax.Array`s from the host's copy of the `(A, b, ...)` global batch.

    Each process keeps only its own rows of dim 1 and hands them to
    `jax.make_array_from_process_local_data`, so in a multi-host run every process feeds exactly its
    shard and no process ever transfers another's rows.
    """
    out = {}
    for k, v in micro.items():
        rows = process_rows(sharding, v.shape, dim=1)
        out[k] = jax.make_array_from_process_local_data(sharding, v[:, rows], v.shape)
    return out


def put_tree(tree: Any, shardings: Any, copy: bool = False) -> Any:
    """Place every leaf of `tree` with its sharding; works for host values and (global) jax Arrays.

    Every process must pass the same values (same seed / same loaded weights). `copy=True` never
    aliases the caller's buffers (needed for trees whose buffers the step donates).
    """
    multi = jax.process_count() > 1

    def one(x, s):
        if isinstance(x, jax.Array):
            if multi and x.is_fully_addressable:
                x = np.asarray(x)  # a process-local array cannot be moved onto other processes' devices
            else:
                return jax.device_put(x, s, may_alias=False if copy else None)
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda index: x[index])

    return jax.tree.map(one, tree, shardings)


def host_scalar(x: jax.Array) -> Any:
    """A replicated (possibly global) scalar as a Python number, without cross-process transfers."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)
    return np.asarray(x).item()
