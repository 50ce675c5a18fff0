"""Training config: the defaults every launch starts from, override checking, resolution.

A launch config (`configs/<experiment>.py`) starts from `default_config()` (re-exported as
`configs.base.get_base_config`) and adds its own sections (`model`, `method`, `data`, ...). The
five sections below belong to the training loop and are checked key by key::

    optim.{name, lr, schedule, warmup_frac, weight_decay, clip_norm, b1, b2, eps}
    train.{num_steps, grad_accum, batch_size, compute_dtype, seed, log_every, eval_every}
    ckpt.{every, keep, async_save}
    mesh.{data, fsdp, tensor}
    logging.{tensorboard, wandb, wandb_mode, wandb_project, progress_bar}

(`ckpt.async_save`, not `ckpt.async`: `async` is a Python keyword, so `cfg.ckpt.async` would not parse.)

Overrides arrive as absl flags, `--config.optim.lr=1e-4`. `ml_collections` already rejects an
unknown key, but with a traceback naming only the last component; `check_overrides` gives one line
naming the full dotted key and the closest valid one::

    unknown config key optim.lrr; did you mean optim.lr?

`define_config_flag` defines the `--config` flag the way `config_flags.DEFINE_config_file` does,
after checking argv first (ml_collections applies `--config.*` overrides while the flag is being
defined, so a typo or a `:ARG` the file does not take would otherwise end in a traceback); and
`parse_flags`, an `absl.app.run(flags_parser=...)`, turns absl's own flag errors into one line::

    _CONFIG = define_config_flag("config", "configs/consolidate.py", "config file")
    if __name__ == "__main__":
        app.run(main, flags_parser=sycojax.train.config.parse_flags)

`check_values` refuses values the loop cannot run with (no steps, a learning rate that is not a
finite number, ...) before any work starts.
"""

from __future__ import annotations

import difflib
import inspect
import json
import math
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import ml_collections
from absl import flags

# The sections owned by the training loop; every other top-level section belongs to the method.
TRAIN_SECTIONS = ("optim", "train", "ckpt", "mesh", "logging")


class ConfigKeyError(KeyError):
    """A config key that does not exist; the message names the closest valid key."""

    def __str__(self) -> str:  # KeyError quotes its message; print it as a sentence.
        return str(self.args[0])


class ConfigValueError(ValueError):
    """A config value the training loop cannot run with; the message names the flag to fix."""


def default_config() -> ml_collections.ConfigDict:
    """The training-loop defaults (see the module docstring for the meaning of each section).

    optim.name: "adamw" | "sgd".   optim.schedule: "constant" | "cosine" | "linear", each with a
    linear warmup from 0 over `warmup_frac * num_steps` steps; cosine and linear decay to 0 at
    `num_steps`. optim.clip_norm: global-norm clipping, <= 0 disables it.
    train.batch_size: GLOBAL examples per optimizer step (all processes, all micro-batches);
    train.grad_accum: micro-batches per step, so each loss call sees batch_size / grad_accum rows.
    train.compute_dtype: dtype in which the loss sees the trainable tree ("float32" | "bfloat16" | "float16").
    train.eval_every / ckpt.every: in optimizer steps; 0 = only at the end of the run.
    mesh.{data, fsdp, tensor}: device-mesh axis sizes; -1 = all devices not used by the others.
    """
    c = ml_collections.ConfigDict()
    c.optim = ml_collections.ConfigDict(
        {
            "name": "adamw",
            "lr": 1e-4,
            "schedule": "cosine",
            "warmup_frac": 0.0,
            "weight_decay": 0.0,
            "clip_norm": 1.0,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
        }
    )
    c.train = ml_collections.ConfigDict(
        {
            "num_steps": 100,
            "grad_accum": 1,
            "batch_size": 8,
            "compute_dtype": "float32",
            "seed": 0,
            "log_every": 10,
            "eval_every": 0,
        }
    )
    c.ckpt = ml_collections.ConfigDict({"every": 100, "keep": 3, "async_save": True})
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})
    c.logging = ml_collections.ConfigDict(
        {"tensorboard": True, "wandb": False, "wandb_mode": "offline", "wandb_project": "sycojax", "progress_bar": True}
    )
    return c


def flat_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Every dotted key path of a (nested) ConfigDict or dict, interior nodes included."""
    out = []
    items = cfg.items() if hasattr(cfg, "items") else ()
    for k, v in items:
        path = f"{prefix}{k}"
        out.append(path)
        if isinstance(v, (ml_collections.ConfigDict, dict)):
            out.extend(flat_keys(v, path + "."))
    return out


def _has_key(cfg: Any, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
            return False
        node = node[part]
    return True


def unknown_key_error(key: str, valid: Iterable[str]) -> ConfigKeyError:
    """`ConfigKeyError("unknown config key <key>; did you mean <closest>?")`, closest by difflib ratio."""
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    hint = f"; did you mean {close[0]}?" if close else ""
    return ConfigKeyError(f"unknown config key {key}{hint}")


def check_keys(cfg: Any, keys: Iterable[str]) -> None:
    """Raise `ConfigKeyError` for the first dotted key in `keys` that `cfg` does not have."""
    valid = None
    for key in keys:
        if not _has_key(cfg, key):
            valid = valid if valid is not None else flat_keys(cfg)
            raise unknown_key_error(key, valid)


def override_keys(argv: Sequence[str], flag_name: str = "config") -> list[str]:
    """Dotted keys overridden in `argv`: `--config.optim.lr=1`, `--config.optim.lr 1` both give "optim.lr"
    (and `--noconfig.ckpt.async_save`, absl's boolean form, gives "ckpt.async_save").
    """
    keys = []
    for arg in argv:
        for head in (f"--{flag_name}.", f"-{flag_name}.", f"--no{flag_name}.", f"-no{flag_name}."):
            if arg.startswith(head):
                keys.append(arg[len(head) :].split("=", 1)[0])
                break
    return keys


def check_overrides(argv: Sequence[str], cfg: Any, flag_name: str = "config") -> None:
    """Raise `ConfigKeyError` naming the closest valid key if an override in `argv` names a missing key."""
    check_keys(cfg, override_keys(argv, flag_name))


def _config_flag_value(argv: Sequence[str], flag_name: str) -> str | None:
    """The value given to `--<flag_name>=...` / `--<flag_name> ...` in argv (the last one wins), or None."""
    value = None
    for i, arg in enumerate(argv):
        for dashes in ("--", "-"):
            if arg.startswith(f"{dashes}{flag_name}="):
                value = arg.split("=", 1)[1]
            elif arg == f"{dashes}{flag_name}" and i + 1 < len(argv):
                value = argv[i + 1]
    return value


def load_config_file(value: str) -> Any:
    """`configs/x.py[:ARG]` -> `get_config([ARG])`, with one-line `ConfigKeyError`s for what goes wrong
    (missing file, no `get_config`, an ARG the function does not take, an error inside it)."""
    path, sep, arg = value.partition(":")
    if not os.path.isfile(path):
        raise ConfigKeyError(f"--config={value}: no such config file {path!r}; pass a file under configs/")
    import importlib.util  # noqa: PLC0415

    spec = importlib.util.spec_from_file_location("sycojax_config_check", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001  (any error while running the file is the file's problem)
        raise ConfigKeyError(f"--config={value}: {path} failed to load: {type(e).__name__}: {e}") from None
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigKeyError(f"--config={value}: {path} defines no get_config(); a config file must")
    takes = len(inspect.signature(get_config).parameters)
    if sep and takes == 0:
        raise ConfigKeyError(
            f"--config={value}: {path} takes no ':{arg}' argument (its get_config() has no parameter); "
            f"drop ':{arg}' and set fields with --config.<section>.<key>=VALUE"
        )
    try:
        return get_config(arg) if sep else get_config()
    except Exception as e:  # noqa: BLE001
        raise ConfigKeyError(f"--config={value}: get_config({arg!r}) failed: {type(e).__name__}: {e}") from None


def define_config_flag(
    name: str, default: str, help_string: str, *, argv: Sequence[str] | None = None,
    flag_values: flags.FlagValues = flags.FLAGS,
):
    """`config_flags.DEFINE_config_file(name, default, ...)` after checking `argv` (default `sys.argv`):
    the config file loads with its `:ARG`, and every `--<name>.*` override names an existing key.
    On a problem it prints `FATAL Flags parsing error: <one line>` and exits with status 1."""
    from ml_collections import config_flags  # noqa: PLC0415

    argv = list(sys.argv if argv is None else argv)
    keys = override_keys(argv[1:], name)
    try:
        cfg = load_config_file(_config_flag_value(argv[1:], name) or default)
        check_keys(cfg, keys)
    except ConfigKeyError as e:
        sys.stderr.write(f"FATAL Flags parsing error: {e}\n")
        sys.exit(1)
    return config_flags.DEFINE_config_file(name, default, help_string, flag_values=flag_values, sys_argv=argv)


def check_values(cfg: Any) -> None:
    """Raise `ConfigValueError` for a training-loop value no run can use, naming the flag to change."""
    tc, oc = cfg.train, cfg.optim
    if int(tc.num_steps) < 1:
        raise ConfigValueError(
            f"train.num_steps={tc.num_steps}: a run needs at least one optimizer step "
            "(--num_iter / --config.train.num_steps must be >= 1)"
        )
    if int(tc.batch_size) < 1:
        raise ConfigValueError(f"train.batch_size={tc.batch_size}: must be >= 1 (--config.train.batch_size)")
    lr = float(oc.lr)
    if not math.isfinite(lr) or lr < 0:
        raise ConfigValueError(f"optim.lr={oc.lr}: the learning rate must be a finite number >= 0 (--lr / --config.optim.lr)")


def parse_flags(
    argv: Sequence[str], flag_name: str = "config", flag_values: flags.FlagValues = flags.FLAGS
) -> list[str]:
    """absl flags parser that checks `--config.*` overrides first (use as `app.run(main, flags_parser=parse_flags)`).

    Loads the config named by `--config=...` with the flag's own parser, checks every override key,
    and on a typo prints `FATAL Flags parsing error: unknown config key ...; did you mean ...?` and
    exits with status 1 (absl's convention for bad flags). Otherwise parses argv normally.
    """
    value = _config_flag_value(argv[1:], flag_name)
    if value is not None and flag_name in flag_values and override_keys(argv[1:], flag_name):
        cfg = flag_values[flag_name].parser.parse(value)
        try:
            check_overrides(argv[1:], cfg, flag_name)
        except ConfigKeyError as e:
            sys.stderr.write(f"FATAL Flags parsing error: {e}\n")
            sys.exit(1)
    try:
        return flag_values(list(argv))
    except flags.Error as e:
        sys.stderr.write(f"FATAL Flags parsing error: {e}\n")
        sys.exit(1)


def resolve_config(cfg: ml_collections.ConfigDict | dict | None) -> ml_collections.ConfigDict:
    """Defaults updated with `cfg`; raises `ConfigKeyError` for an unknown key in a training section.

    Sections other than `TRAIN_SECTIONS` (the method's `model`, `data`, ...) are copied as given.
    Returns a new unlocked ConfigDict; `cfg` is not modified.
    """
    out = default_config()
    given = ml_collections.ConfigDict(cfg if cfg is not None else {})
    given_dict = given.to_dict()
    for section, value in given_dict.items():
        if section in TRAIN_SECTIONS:
            if not isinstance(value, dict):
                raise ConfigKeyError(f"config section {section} must be a dict of fields, got {value!r}")
            for key, v in value.items():
                if key not in out[section]:
                    raise unknown_key_error(f"{section}.{key}", flat_keys(out))
                out[section][key] = v
        else:
            out[section] = value
    return out


def config_to_json(cfg: ml_collections.ConfigDict | dict) -> str:
    """The resolved config as indented JSON (non-JSON leaves written with `str`)."""
    d = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
    return json.dumps(d, indent=2, sort_keys=True, default=str)


def config_to_jsonable(cfg: ml_collections.ConfigDict | dict) -> dict:
    """The resolved config as a plain JSON-able dict (what is saved with every checkpoint)."""
    return json.loads(config_to_json(cfg))
