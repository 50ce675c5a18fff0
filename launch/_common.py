"""Shared start-up for the absl launches: repo root on sys.path, offline Hugging Face, quiet logs,
one-line errors."""

import contextlib
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


@contextlib.contextmanager
def one_line_errors(*extra: type[BaseException]):
    """Turn the errors a user can fix (a model name, a file, a config value, a diverged run, a broken
    checkpoint) into one `error: ...` line and exit status 1, instead of a traceback."""
    from sycojax.data.sources import DataError  # noqa: PLC0415  (after sys.path is set up above)
    from sycojax.methods.sycomode import ConsolidationError  # noqa: PLC0415
    from sycojax.models.convert import LoadError  # noqa: PLC0415
    from sycojax.models.model import SequenceTooLong  # noqa: PLC0415
    from sycojax.train import ConfigValueError, NonFiniteError, UnreadableCheckpointError  # noqa: PLC0415

    try:
        yield
    except (LoadError, DataError, ConsolidationError, ConfigValueError, NonFiniteError,
            UnreadableCheckpointError, SequenceTooLong, *extra) as e:
        raise SystemExit(f"error: {e}") from None


def load_config(name: str):
    """`configs/<name>`'s `get_config()` (for launches that build configs themselves)."""
    from sycojax.train.config import load_config_file  # noqa: PLC0415

    return load_config_file(config_path(name))


def run_training(config_value, train_run, errors: tuple = (), *, summary) -> None:
    """The body of a `launch/train_<method>.py`: start (multi-host if asked), check the config, run
    `train_run(config, resume=, overwrite=)` with one-line errors, print `summary(report)` and where outputs went."""
    from absl import flags  # noqa: PLC0415

    from sycojax.train import check_values, distributed  # noqa: PLC0415

    quiet_logs()
    distributed.maybe_initialize_from_flags()
    with one_line_errors(*errors):
        check_values(config_value)
        report = train_run(config_value, resume=flags.FLAGS.resume, overwrite=flags.FLAGS.overwrite)
    print()
    for line in summary(report):
        print(line)
    for k, v in report["outputs"].items():
        print(f"{k + ':':<11}{v}")


def define_training_flags() -> None:
    """--resume / --overwrite and the multi-host flags every training launch takes."""
    from absl import flags  # noqa: PLC0415

    from sycojax.train import distributed  # noqa: PLC0415

    flags.DEFINE_bool("resume", False, "continue the run in --config.workdir from its latest checkpoint")
    flags.DEFINE_bool("overwrite", False, "replace the run in --config.workdir")
    distributed.define_flags()
