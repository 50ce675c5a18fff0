"""The LoRA conditions' results: added to a gist eval's eval.json (atomically, other entries kept), the
per-instruction details next to it, and the table as text.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sycojax.methods.gist_lora.spec import GistLoraError

DETAILS_FILE = "eval_lora_details.json"


def _write_json_atomic(path: Path, data: Any) -> None:
    """Temp file in the same directory + `os.replace`; keeps an existing file's mode (new: 0666 & ~umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        mode = path.stat().st_mode & 0o777
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_json_dict(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise GistLoraError(f"{path} is not valid JSON ({e}); nothing was written") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise GistLoraError(f"{path} is not an eval table {{split: {{condition: metrics}}}}; nothing was written")
    return data


def read_eval_json(path: str | os.PathLike) -> dict:
    """The eval table at `path` ({} when missing); a file that is not one is a `GistLoraError`."""
    return _read_json_dict(Path(path))


def add_to_eval_json(path: str | os.PathLike, table: Mapping[str, Mapping[str, Any]]) -> dict:
    """Add (or replace) `table`'s conditions in the eval.json at `path`, keeping every other entry; creates
    the file when missing; written atomically (temp file + os.replace). Returns the merged table."""
    path = Path(path)
    merged = _read_json_dict(path)
    for split, conds in table.items():
        merged.setdefault(split, {}).update({c: dict(m) for c, m in conds.items()})
    _write_json_atomic(path, merged)
    return merged


def details_path(eval_json: str | os.PathLike) -> Path:
    return Path(eval_json).parent / DETAILS_FILE


def write_details(path: str | os.PathLike, details: Mapping[str, Any]) -> None:
    """Per-split details (queries, outputs, curves) next to eval.json; other splits already there are kept."""
    path = Path(path)
    merged = _read_json_dict(path)
    merged.update({k: dict(v) for k, v in details.items()})
    _write_json_atomic(path, merged)


def format_table(table: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """The LoRA conditions as text: metrics, patch size and median seconds per instruction."""

    def f(x, fmt=".1f"):
        return "—" if x is None else format(x, fmt)

    head = (f"{'split':<7} {'condition':<13} {'n':>3} {'instr':>5} {'ROUGE-L':>8} {'vs pos':>7} {'vs tch':>7} "
            f"{'loss':>6} {'MB':>6} {'s/instr':>8}")
    lines = [head]
    for split, conds in table.items():
        for name, m in conds.items():
            if not name.startswith("lora_"):
                continue
            lines.append(
                f"{split:<7} {name:<13} {m['n']:>3} {m.get('n_instructions', 0):>5} {f(m['rougeL']):>8} "
                f"{f(m['rougeL_vs_pos']):>7} {f(m.get('rougeL_vs_teacher')):>7} {f(m['loss'], '.3f'):>6} "
                f"{f(m.get('bytes', 0) / 1e6, '.2f'):>6} {f(m.get('s_per_instruction')):>8}")
    return "\n".join(lines)
