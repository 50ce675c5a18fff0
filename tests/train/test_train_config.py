"""Config defaults, override checking with the closest key, resolution (issue 4, done-when 5 of the brief)."""

import os

import pytest
from absl import flags
from ml_collections import config_flags

from sycojax.train.config import (
    ConfigKeyError,
    check_overrides,
    default_config,
    override_keys,
    parse_flags,
    resolve_config,
)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE_CONFIG = os.path.join(REPO, "configs", "base.py")


def test_typo_names_closest_key():
    cfg = default_config()
    with pytest.raises(ConfigKeyError) as e:
        check_overrides(["prog", "--config.optim.lrr=1"], cfg)
    assert str(e.value) == "unknown config key optim.lrr; did you mean optim.lr?"
    with pytest.raises(ConfigKeyError, match="did you mean optim.lr"):
        check_overrides(["--config.optimm.lr", "1"], cfg)
    with pytest.raises(ConfigKeyError, match="did you mean train.num_steps"):
        check_overrides(["--config.train.num_step=3"], cfg)
    check_overrides(["--config.optim.lr=1", "--config.mesh.fsdp", "2", "--other=3"], cfg)  # valid: no error


def test_override_keys_forms():
    argv = ["--config.a.b=1", "--config.c", "2", "-config.d=3", "--noconfig.e", "--configx=1", "--lr=2"]
    assert override_keys(argv) == ["a.b", "c", "d", "e"]


def test_parse_flags_checks_then_applies(capsys):
    # (config_flags reads the overrides from sys.argv unless given `sys_argv`)
    argv = ["prog", f"--config={BASE_CONFIG}", "--config.optim.lrr=1"]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=fv, sys_argv=argv)
    with pytest.raises(SystemExit) as e:
        parse_flags(argv, flag_values=fv)
    assert e.value.code == 1
    assert "unknown config key optim.lrr; did you mean optim.lr?" in capsys.readouterr().err
    argv = ["prog", f"--config={BASE_CONFIG}", "--config.optim.lr=0.5", "--noconfig.ckpt.async_save", "pos"]
    fv2 = flags.FlagValues()
    config_flags.DEFINE_config_file("config", flag_values=fv2, sys_argv=argv)
    rest = parse_flags(argv, flag_values=fv2)
    assert rest == ["prog", "pos"]
    assert fv2.config.optim.lr == 0.5 and fv2.config.ckpt.async_save is False
    assert fv2.config.train.num_steps == default_config().train.num_steps


def test_resolve_fills_defaults_and_rejects_unknown_training_keys():
    cfg = resolve_config({"optim": {"lr": 3e-4}, "model": {"name": "tiny"}})
    assert cfg.optim.lr == 3e-4 and cfg.optim.name == "adamw" and cfg.model.name == "tiny"
    with pytest.raises(ConfigKeyError, match="unknown config key ckpt.evry; did you mean ckpt.every"):
        resolve_config({"ckpt": {"evry": 3}})


def test_wandb_missing_is_a_clear_error(tmp_path):
    try:
        import wandb  # noqa: F401

        pytest.skip("wandb is installed")
    except ImportError:
        pass
    from sycojax.train.metrics import MetricsWriter

    with pytest.raises(ImportError, match="pip install wandb"):
        MetricsWriter(str(tmp_path), {"wandb": True, "tensorboard": False}, {})
