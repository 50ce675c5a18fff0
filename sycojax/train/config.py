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

`parse_flags` is an `absl.app.run(flags_parser=...)` that runs that check before absl parses, so a
launch gets it for free::

    _CONFIG = config_flags.DEFINE_config_file("config")
    if __name__ == "__main__":
        app.run(main, flags_parser=sycojax.train.config.parse_flags)
"""

from __future__ import annotations

import difflib
import json
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
