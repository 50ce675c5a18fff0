"""A toy problem for the training-loop tests: a 2-layer MLP regression with dropout.

Imported by the tests and run by the subprocess workers (which put this folder on sys.path).
The loss draws a dropout mask from `rng`, so any mistake in how the loop derives per-step keys
(on resume, across devices or processes) changes the losses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sycojax.train import ArrayIterator, default_config, train

N, D_IN, D_HID, D_OUT = 64, 6, 16, 2
# FSDP / tensor rules for the MLP, used where a test shards the parameters.
MLP_RULES = ((r"dense1/kernel$", ("embed", "mlp")), (r"dense2/kernel$", ("mlp", "embed")))


def arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D_IN)).astype(np.float32)
    w = rng.normal(size=(D_IN, D_OUT)).astype(np.float32)
    y = np.tanh(x @ w) + 0.05 * rng.normal(size=(N, D_OUT)).astype(np.float32)
    tokens = rng.integers(0, 100, size=(N, 5)).astype(np.int32)
    return {"x": x, "y": y.astype(np.float32), "tokens": tokens}


def init_trainable(seed: int = 1) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "dense1": {
            "kernel": (rng.normal(size=(D_IN, D_HID)) / np.sqrt(D_IN)).astype(np.float32),
            "bias": np.zeros(D_HID, np.float32),
        },
        "dense2": {
            "kernel": (rng.normal(size=(D_HID, D_OUT)) / np.sqrt(D_HID)).astype(np.float32),
            "bias": np.zeros(D_OUT, np.float32),
        },
    }


def frozen_tree() -> dict:
    return {"out_scale": np.array([1.5, 0.5], np.float32)}


def make_loss(dropout: float = 0.25):
    def loss_fn(trainable, frozen, batch, rng):
        h = jax.nn.relu(batch["x"] @ trainable["dense1"]["kernel"] + trainable["dense1"]["bias"])
        if dropout:
            keep = jax.random.bernoulli(rng, 1.0 - dropout, h.shape)
            h = jnp.where(keep, h / (1.0 - dropout), 0.0)
        pred = (h @ trainable["dense2"]["kernel"] + trainable["dense2"]["bias"]) * frozen["out_scale"]
        err = (pred.astype(jnp.float32) - batch["y"]) ** 2
        return jnp.mean(err), {"mse_out0": jnp.mean(err[:, 0])}

    return loss_fn


def config(num_steps: int = 6, **overrides):
    """Defaults for the toy: SGD-momentum-free AdamW, batch 8, log every step; `section__key=value` overrides."""
    cfg = default_config()
    cfg.train.num_steps = num_steps
    cfg.train.batch_size = 8
    cfg.train.log_every = 1
    cfg.optim.lr = 0.05
    cfg.optim.warmup_frac = 0.2
    cfg.ckpt.every = 2
    cfg.logging.progress_bar = False
    for key, value in overrides.items():
        section, name = key.split("__")
        cfg[section][name] = value
    return cfg


def run(
    workdir: str,
    num_steps: int = 6,
    *,
    data=None,
    dropout: float = 0.25,
    resume: bool = False,
    mesh=None,
    param_rules=None,
    eval_fn=None,
    **overrides,
):
    kwargs = {}
    if param_rules is not None:
        kwargs["param_rules"] = param_rules
    return train(
        make_loss(dropout),
        init_trainable(),
        frozen_tree(),
        data if data is not None else ArrayIterator(arrays(), 8, seed=3),
        config(num_steps, **overrides),
        workdir,
        metadata={"base_model": "toy-mlp", "base_hash": "0123abcd"},
        eval_fn=eval_fn,
        resume=resume,
        mesh=mesh,
        **kwargs,
    )


def losses(result) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in result.history if "loss" in r}


def params_np(result) -> dict:
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), result.trainable)
