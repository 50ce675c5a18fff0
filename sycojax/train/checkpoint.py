"""Orbax checkpoints of a training run: what is saved, where, and how it is read back.

Layout (Orbax `CheckpointManager`, one directory per saved step)::

    <workdir>/ckpt/<step>/trainable/   the trainable tree (fp32, Orbax PyTree / OCDBT)
                         /opt_state/   the optax state (same structure as the optimizer's init)
                         /data/        JSON: the data iterator's `get_state()` after `step` batches
                         /meta/        JSON: {"step", "config" (resolved), "metadata" (base model id + hash, ...)}

The frozen tree (base weights, teacher targets) is never written: `metadata` names it instead.
A save first writes `<step>.orbax-checkpoint-tmp-*` and renames it to `<step>` only when every
item is complete, so a crash (even SIGKILL) mid-save leaves the previous step as the latest one;
`cleanup_tmp_directories` removes the half-written directory on the next start. A step that was
finished but damaged afterwards (a truncated or deleted file) is found when it is read:
`restore_latest_readable` moves it aside to `broken-<step>-<time>/` and falls back to the step before.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

ITEMS = ("trainable", "opt_state", "data", "meta")


class UnreadableCheckpointError(RuntimeError):
    """No saved step of a run can be read back (every one is damaged)."""


def read_error_summary(e: BaseException, limit: int = 240) -> str:
    """One line from an Orbax / TensorStore read error: the file it names and the reason, trimmed."""
    msg = " ".join(str(e).split())
    files = re.findall(r'local file "([^"]+)"', msg)
    reason = next((r for r in ("OUT_OF_RANGE", "NOT_FOUND", "DATA_LOSS", "INVALID_ARGUMENT") if r in msg), "")
    if files:
        where = files[-1]
        return f"{reason + ': ' if reason else ''}cannot read {where} (truncated or damaged file?)"
    return f"{type(e).__name__}: {msg[:limit]}{'...' if len(msg) > limit else ''}"


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a tree of arrays: the restore target for Orbax."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def ckpt_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), "ckpt")


def item_handlers(numpy_restore: bool = False) -> dict[str, ocp.CheckpointHandler]:
    """Orbax handlers of the four items; `numpy_restore` reads array items back without a target
    tree (as numpy, whatever mesh wrote them), which is what `sycojax.train.inspect` needs."""
    tree = ocp.PyTreeCheckpointHandler if numpy_restore else ocp.StandardCheckpointHandler
    return {
        "trainable": tree(),
        "opt_state": tree(),
        "data": ocp.JsonCheckpointHandler(),
        "meta": ocp.JsonCheckpointHandler(),
    }


class RunCheckpoints:
    """The `CheckpointManager` of one workdir, with the four items of the module docstring."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True, read_only: bool = False):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep if keep and keep > 0 else None,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=not read_only,
            create=not read_only,
            read_only=read_only,
        )
        self.directory = directory
        self.manager = ocp.CheckpointManager(directory, options=options, item_handlers=item_handlers())

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, trainable: Any, opt_state: Any, data_state: dict, meta: dict) -> None:
        """Start saving `step` (async when enabled: device->host copy now, file writes in the background)."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                trainable=ocp.args.StandardSave(trainable),
                opt_state=ocp.args.StandardSave(opt_state),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta),
            ),
            force=True,
        )

    def restore(self, step: int, trainable_like: Any, opt_state_like: Any) -> tuple[Any, Any, dict, dict]:
        """`(trainable, opt_state, data_state, meta)` of `step`, arrays placed like the `*_like` trees."""
        r = self.manager.restore(
            step,
            args=ocp.args.Composite(
                trainable=ocp.args.StandardRestore(abstract_like(trainable_like)),
                opt_state=ocp.args.StandardRestore(abstract_like(opt_state_like)),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return r.trainable, r.opt_state, r.data, r.meta

    def restore_latest_readable(self, trainable_like: Any, opt_state_like: Any) -> tuple[int, tuple, list[str]]:
        """`(step, (trainable, opt_state, data_state, meta), notes)` of the newest step that reads back.

        A step that fails to read (truncated / missing file) is moved aside to `broken-<step>-<time>/`
        in the checkpoint directory (kept for a post-mortem, ignored by Orbax) and the step before is
        tried; `notes` says what was moved. Raises `UnreadableCheckpointError` if no step reads.
        """
        notes = []
        for step in reversed(self.all_steps()):
            try:
                return step, self.restore(step, trainable_like, opt_state_like), notes
            except Exception as e:  # noqa: BLE001  (Orbax / TensorStore raise ValueError, OSError, ...)
                why = read_error_summary(e)
                aside = os.path.join(self.directory, f"broken-{step}-{time.strftime('%Y%m%d-%H%M%S')}")
                if jax.process_index() == 0:
                    os.rename(os.path.join(self.directory, str(step)), aside)
                self.reload()
                notes.append(f"checkpoint step {step} is unreadable ({why}); moved it aside to {aside}")
        raise UnreadableCheckpointError(
            f"no checkpoint in {self.directory} reads back: " + "; ".join(notes)
            + ". Start again in a new --workdir (or pass --overwrite)."
        )

    def reload(self) -> None:
        """Re-read the step list from disk (after a step directory was moved)."""
        self.manager.reload()

    def restore_json(self, step: int) -> tuple[dict, dict]:
        """`(data_state, meta)` of `step` without reading any array."""
        r = self.manager.restore(
            step, args=ocp.args.Composite(data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore())
        )
        return r.data, r.meta

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
