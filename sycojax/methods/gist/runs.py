"""A gisting run on disk: the metadata saved with its checkpoints, the resume check, and reading a
trained condition back (`load_run` → `GistRun`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from sycojax.methods.gist.spec import GistError, GistSpec
from sycojax.train.inspection import CheckpointReader, NotACheckpointError

REPORT = "report.json"


def default_workdir(spec: GistSpec) -> str:
    return os.path.join("checkpoints", "gist", f"{spec.condition}_k{spec.num_gist_tokens}")


def run_metadata(info: Any, spec: GistSpec) -> dict[str, Any]:
    """Saved with every checkpoint; a resume with another k / condition / base is refused (`check_resume`)."""
    return {
        "method": "gist", "base_model": info.id, "base_hash": info.content_hash, "condition": spec.condition,
        "num_gist_tokens": spec.num_gist_tokens, "train_base": spec.train_base, "fmt": spec.fmt,
        "max_length": spec.max_length, "lora_rank": spec.lora.rank if spec.train_base == "lora" else None,
    }


def check_resume(workdir: str | os.PathLike, metadata: Mapping[str, Any]) -> None:
    """Refuse to resume a run trained with another k, condition, base or format (nothing is read but JSON)."""
    try:
        reader = CheckpointReader(str(workdir))
    except NotACheckpointError:
        return  # nothing to resume: the loop starts from step 0
    try:
        saved = reader.meta(reader.resolve_step(None)).get("metadata") or {}
    finally:
        reader.close()
    for key in ("method", "num_gist_tokens", "condition", "train_base", "fmt", "max_length", "lora_rank", "base_hash"):
        if saved.get(key) != metadata.get(key):
            raise GistError(
                f"cannot resume {workdir}: it was trained with {key}={saved.get(key)!r}, this run asks for "
                f"{key}={metadata.get(key)!r}; use the same settings, or a new --config.workdir"
            )


@dataclasses.dataclass
class GistRun:
    """A trained condition read back from its checkpoint."""

    workdir: str
    step: int
    spec: GistSpec
    config: dict  # the resolved config saved with the checkpoint
    metadata: dict  # base model id + hash, condition, k, ...
    trainable: dict  # numpy tree {"gist", "lora" | "base"}

    @property
    def name(self) -> str:
        return self.spec.name


def load_run(
    workdir: str, *, num_gist_tokens: int | None = None, condition: str | None = None, step: int | None = None,
) -> GistRun:
    """The latest (or `step`) checkpoint of a gisting run; a run trained with another k or condition than
    the ones asked for is an error (the `<GIST>` row has the same shape for every k, so it would load silently).
    """
    reader = CheckpointReader(workdir)
    try:
        step = reader.resolve_step(step)
        meta = reader.meta(step)
        config = meta.get("config") or {}
        if (meta.get("metadata") or {}).get("method") != "gist" or "num_gist_tokens" not in config.get("method", {}):
            raise GistError(f"{workdir} holds a checkpoint of another method, not a gisting run (launch/train_gist.py)")
        spec = GistSpec.from_config(config)
        if num_gist_tokens is not None and num_gist_tokens != spec.num_gist_tokens:
            raise GistError(
                f"{workdir} was trained with num_gist_tokens={spec.num_gist_tokens}, not {num_gist_tokens}: a gist "
                f"model only understands the k it was trained with; evaluate it with "
                f"--num_gist_tokens={spec.num_gist_tokens} or train a run with k={num_gist_tokens}"
            )
        if condition is not None and condition != spec.condition:
            raise GistError(f"{workdir} was trained with condition={spec.condition}, but it was given as the "
                            f"{condition} run; pass it with the matching flag")
        trainable = reader.load(step)
    finally:
        reader.close()
    return GistRun(str(workdir), int(step), spec, config, meta.get("metadata") or {}, trainable)
