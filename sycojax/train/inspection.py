"""Read a training run's checkpoints without the code that wrote them (`launch/inspect_ckpt.py`).

Arrays come back as host numpy arrays whatever mesh saved them, so a checkpoint written by a
64-GPU run can be inspected, diffed and exported on a laptop.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from sycojax.train.checkpoint import ITEMS, item_handlers, read_error_summary
from sycojax.train.sharding import path_str

EXPORT_FORMATS = (".safetensors", ".npz")


class NotACheckpointError(ValueError):
    """The directory holds no checkpoint written by `sycojax.train.train`."""


def _step_dirs(directory: str) -> list[int]:
    """Steps `d/<int>/` that hold the `trainable` and `meta` items of a finished save."""
    if not os.path.isdir(directory):
        return []
    steps = []
    for name in os.listdir(directory):
        d = os.path.join(directory, name)
        if name.isdigit() and all(os.path.isdir(os.path.join(d, item)) for item in ("trainable", "meta")):
            steps.append(int(name))
    return sorted(steps)


def find_ckpt_dir(path: str) -> str:
    """The checkpoint directory for `path` (a workdir holding `ckpt/`, or that `ckpt/` itself).

    Raises `NotACheckpointError` naming the layout it expected and what it found instead.
    """
    path = os.path.abspath(path)
    for candidate in (os.path.join(path, "ckpt"), path):
        if _step_dirs(candidate):
            return candidate
    if not os.path.exists(path):
        found = "it does not exist"
    elif not os.path.isdir(path):
        found = "it is not a directory"
    else:
        entries = sorted(os.listdir(path))
        found = f"it contains {entries[:10]}{' ...' if len(entries) > 10 else ''}" if entries else "it is empty"
    raise NotACheckpointError(
        f"{path} is not a sycojax checkpoint directory: expected an Orbax CheckpointManager directory "
        f"with step folders <step>/{{{','.join(ITEMS)}}} (as written by sycojax.train.train under "
        f"<workdir>/ckpt), or a workdir containing ckpt/; {found}"
    )


def flatten(tree: Any, sep: str = ".") -> dict[str, Any]:
    """`{"model.layers.q_proj.weight": leaf, ...}` (path components joined by `sep`), None leaves dropped."""
    return {path_str(p).replace("/", sep): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


class CheckpointReader:
    """Read-only view of the checkpoints of one run (see `sycojax.train.checkpoint` for the layout)."""

    def __init__(self, path: str):
        self.directory = find_ckpt_dir(path)
        options = ocp.CheckpointManagerOptions(read_only=True, create=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=item_handlers(True))

    @property
    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def resolve_step(self, step: int | None) -> int:
        steps = self.steps
        if step is None:
            return steps[-1]
        if step not in steps:
            raise ValueError(f"no checkpoint at step {step} in {self.directory}; saved steps: {steps}")
        return step

    def meta(self, step: int) -> dict[str, Any]:
        """`{"step", "config", "metadata", ...}` written with the checkpoint."""
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def data_state(self, step: int) -> dict[str, Any]:
        return self.manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore())).data

    def tree_info(self, step: int, item: str = "trainable") -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """`{path: (shape, dtype)}` of an array item, read from metadata only."""
        md = self.manager.item_metadata(step)[item]
        tree = md.tree if hasattr(md, "tree") else md
        return {path: (tuple(m.shape), np.dtype(m.dtype)) for path, m in flatten(tree).items()}

    def load(self, step: int, item: str = "trainable") -> Any:
        """An array item of `step` as a tree of numpy arrays."""
        md = self.manager.item_metadata(step)[item]
        tree = md.tree if hasattr(md, "tree") else md
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        args = ocp.args.Composite(**{item: ocp.args.PyTreeRestore(restore_args=restore_args)})
        return self.manager.restore(step, args=args)[item]

    def close(self) -> None:
        self.manager.close()


def format_tree(info: dict[str, tuple[tuple[int, ...], np.dtype]]) -> str:
    """Table: path, shape, dtype, bytes per leaf; then parameter count and bytes per top-level subtree."""
    rows = [("path", "shape", "dtype", "bytes")]
    per_top: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for path, (shape, dtype) in info.items():
        n = int(np.prod(shape))
        rows.append((path, str(shape), str(dtype), f"{n * dtype.itemsize:,}"))
        top = per_top[path.split(".")[0]]
        top[0] += n
        top[1] += n * dtype.itemsize
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.append("")
    lines.append("parameters per top-level subtree:")
    total_n = total_b = 0
    for top, (n, b) in sorted(per_top.items()):
        lines.append(f"  {top}: {n:,} params, {b:,} bytes")
        total_n, total_b = total_n + n, total_b + b
    lines.append(f"  total: {total_n:,} params, {total_b:,} bytes")
    return "\n".join(lines)


def describe(reader: CheckpointReader, step: int | None = None) -> str:
    """Steps, the trainable tree, optimizer-state size, data position, metadata and config of a step."""
    step = reader.resolve_step(step)
    meta = reader.meta(step)
    opt = reader.tree_info(step, "opt_state")
    opt_bytes = sum(int(np.prod(s)) * d.itemsize for s, d in opt.values())
    return "\n".join(
        [
            f"checkpoint directory: {reader.directory}",
            f"steps: {reader.steps}",
            f"step shown: {step}",
            "",
            "trainable tree:",
            format_tree(reader.tree_info(step, "trainable")),
            "",
            f"optimizer state: {len(opt)} arrays, {opt_bytes:,} bytes",
            f"data iterator state: {json.dumps(reader.data_state(step))}",
            "",
            "metadata:",
            json.dumps(meta.get("metadata", {}), indent=2, sort_keys=True),
            "",
            "config:",
            json.dumps(meta.get("config", {}), indent=2, sort_keys=True),
        ]
    )


def verify(reader: CheckpointReader, step: int | None = None) -> list[str]:
    """Problems of a step's array items, found by reading every array back (empty list: all good).

    Metadata alone looks fine when a data file is truncated, so each item is read in full and every
    array's shape and dtype compared with what the metadata promises.
    """
    step = reader.resolve_step(step)
    problems = []
    for item in ("trainable", "opt_state"):
        try:
            expected = reader.tree_info(step, item)
            got = {k: (tuple(np.shape(v)), np.asarray(v).dtype) for k, v in flatten(reader.load(step, item)).items()}
        except Exception as e:  # noqa: BLE001  (Orbax / TensorStore raise ValueError, OSError, ...)
            problems.append(f"step {step} {item}: {read_error_summary(e)}")
            continue
        wrong = [k for k in expected if got.get(k) != expected[k]]
        if wrong:
            problems.append(f"step {step} {item}: {len(wrong)} arrays differ from the metadata, e.g. {wrong[0]}")
    return problems


def diff_steps(reader: CheckpointReader, step_a: int, step_b: int, item: str = "trainable") -> dict[str, float]:
    """`{path: max |b - a|}` per leaf of an array item between two saved steps."""
    a = flatten(reader.load(reader.resolve_step(step_a), item))
    b = flatten(reader.load(reader.resolve_step(step_b), item))
    if a.keys() != b.keys():
        raise ValueError(f"steps {step_a} and {step_b} have different trees: {sorted(a.keys() ^ b.keys())}")
    return {
        k: float(np.max(np.abs(b[k].astype(np.float64) - a[k].astype(np.float64)))) if np.size(a[k]) else 0.0 for k in a
    }


def export(reader: CheckpointReader, out_path: str, step: int | None = None, item: str = "trainable") -> str:
    """Write an array item of a step to `.safetensors` or `.npz` (keys: dotted tree paths).

    The safetensors header metadata carries `step` and the run's JSON `metadata`. Returns the path.
    """
    step = reader.resolve_step(step)
    ext = os.path.splitext(out_path)[1]
    if ext not in EXPORT_FORMATS:
        raise ValueError(f"export path must end with one of {EXPORT_FORMATS}, got {out_path!r}")
    tensors = {k: np.ascontiguousarray(v) for k, v in flatten(reader.load(step, item)).items()}
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    if ext == ".npz":
        np.savez(out_path, **tensors)
    else:
        from safetensors.numpy import save_file

        header = {"step": str(step), "item": item, "metadata": json.dumps(reader.meta(step).get("metadata", {}))}
        save_file(tensors, out_path, metadata=header)
    return out_path
