"""Shared defaults every launch config starts from.

A launch config adds its own sections and changes what it needs::

    from configs.base import get_base_config

    def get_config():
        cfg = get_base_config()
        cfg.optim.lr = 2e-5
        cfg.model = ml_collections.ConfigDict(dict(name="smollm2-135m"))
        return cfg

Sections owned by the training loop (checked key by key, see `sycojax.train.config`):
optim, train, ckpt, mesh, logging. Override any field on the command line,
`--config.optim.lr=1e-4`; a typo names the closest valid key.
"""

import ml_collections

from sycojax.train.config import default_config


def get_base_config() -> ml_collections.ConfigDict:
    """A fresh copy of the training-loop defaults (`sycojax.train.config.default_config`)."""
    return default_config()


def get_config() -> ml_collections.ConfigDict:
    """So this file also loads on its own: `--config=configs/base.py`."""
    return get_base_config()
