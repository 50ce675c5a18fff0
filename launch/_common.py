"""Shared start-up for the absl launches: repo root on sys.path, offline Hugging Face, quiet logs."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def config_path(name: str) -> str:
    return os.path.join(ROOT, "configs", name)


def quiet_logs() -> None:
    """Keep absl INFO (Orbax logs every save at INFO) off the console unless --verbosity was given."""
    from absl import logging  # noqa: PLC0415

    if not any(a.startswith(("--verbosity", "-v", "--v=")) for a in sys.argv[1:]):
        logging.set_verbosity(logging.WARNING)
