"""The LoRA trees, one per rank: a nested init (rank r starts from the first r components of the largest
rank's), and `train_lora`: `spec.steps` AdamW steps of SyCoMode's distillation loss on the shared targets.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sycojax.adapters import init_lora
from sycojax.methods import sycomode as sm
from sycojax.methods.gist_lora.spec import LoraEvalSpec
from sycojax.methods.gist_lora.teacher import TeacherData
from sycojax.models import ModelConfig
from sycojax.train.optim import make_optimizer


@functools.lru_cache(maxsize=32)
def _train_step(cfg: ModelConfig, dspec: sm.Spec, optim_items: tuple, steps: int):
    tx, _ = make_optimizer(dict(optim_items), steps)
    loss_fn = sm.make_loss_fn(cfg, dspec)

    @jax.jit
    def step(trainable, opt_state, params, batch):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, {"base": params}, batch, None)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    return tx, step


def nested_init(params, cfg: ModelConfig, spec: LoraEvalSpec, seed: int = 0) -> dict:
    """`init_lora` at the largest rank (numpy); rank r starts from its first r components (`slice_lora`).

    Kaiming-uniform A has a bound that depends on the input size only, so the first r rows are a rank-r
    init with the same distribution; the ranks are nested (rank 2's init is part of rank 16's).
    """
    return jax.device_get(init_lora(params, cfg, spec.lora(max(spec.ranks)), jax.random.key(seed)))


def slice_lora(tree: Mapping[str, Any], rank: int) -> dict:
    """The first `rank` components of every LoRA pair: `A[:, :r, :]`, `B[:, :, :r]`."""

    def cut(node):
        if isinstance(node, Mapping) and "lora_A" in node:
            return {"lora_A": node["lora_A"][:, :rank, :], "lora_B": node["lora_B"][:, :, :rank]}
        return {k: cut(v) for k, v in node.items()}

    return cut(tree)


def train_lora(params, cfg: ModelConfig, teacher: TeacherData, spec: LoraEvalSpec, rank: int,
               seed: int = 0, init: Mapping[str, Any] | None = None) -> tuple[dict, list[float]]:
    """LoRA r (alpha 2r) trained for `spec.steps` steps on the shared targets; `(lora tree, losses)`.

    `init`: a larger-rank init (`nested_init`) to start from its first r components; default `init_lora`.
    """
    dspec = spec.distill_spec(rank)
    tx, step = _train_step(cfg, dspec, tuple(sorted(spec.optim().items())), int(spec.steps))
    lora = slice_lora(init, rank) if init is not None else init_lora(params, cfg, dspec.lora, jax.random.key(seed))
    trainable = {"lora": jax.tree.map(jnp.asarray, lora)}
    opt_state = tx.init(trainable)
    arrays = {k: v for k, v in teacher.targets.train_arrays().items() if k != "num_tokens"}
    n_rows = arrays["tokens"].shape[0]
    bs = spec.batch_size
    order = np.random.default_rng(seed).permutation(n_rows) if n_rows > bs else np.arange(n_rows)
    losses = []
    for s in range(spec.steps):
        start = (s * bs) % n_rows
        rows = order[start : start + bs]
        batch = {k: jnp.asarray(v[rows]) for k, v in arrays.items()}
        trainable, opt_state, loss = step(trainable, opt_state, params, batch)
        losses.append(float(loss))
    return jax.device_get(trainable["lora"]), losses
