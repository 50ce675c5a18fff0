"""One optimizer update: gradient accumulation over micro-batches, then the optax chain.

For a batch split into A micro-batches `x_1..x_A` (leading axis of every batch leaf), with
`θ` the fp32 trainable tree, `φ` the frozen tree and `c(·)` the cast to the compute dtype::

    (L_k, m_k), g_k = value_and_grad(loss_fn)(c(θ), φ, x_k, rng_k)     k = 1..A  (lax.scan)
    g = (1/A) Σ_k g_k              loss = (1/A) Σ_k L_k          metrics = (1/A) Σ_k m_k
    updates, opt_state = tx.update(g, opt_state, θ);   θ ← θ + updates

`rng_k = split(fold_in(key(seed), t), A)[k]` with `t` the number of updates already applied, so a
resumed run draws the same randomness as an uninterrupted one. Gradients flow through the cast, so
they (and the optimizer state and the update) are fp32 whatever the compute dtype.

The average is unweighted: a loss normalised per token gives the full-batch value only when every
micro-batch holds the same number of counted tokens.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

LossFn = Callable[[Any, Any, dict, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(name: str) -> jnp.dtype:
    """`train.compute_dtype` string -> jnp dtype."""
    if name not in DTYPES:
        raise ValueError(f"train.compute_dtype={name!r}; choose one of {tuple(DTYPES)}")
    return DTYPES[name]


def cast_floating(tree: Any, dtype: Any) -> Any:
    """Cast the floating-point leaves of `tree` to `dtype`; integer and boolean leaves are untouched.

    The loop applies it to the trainable tree inside the step; a method may apply it once to its
    frozen base weights before calling `train` (the frozen tree is passed as given).
    """

    def one(x):
        return x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x

    return jax.tree.map(one, tree)


def make_train_step(
    loss_fn: LossFn, tx: optax.GradientTransformation, schedule: optax.Schedule, *, seed: int, dtype: Any
) -> Callable:
    """`train_step(trainable, opt_state, step, frozen, batch) -> (trainable, opt_state, step + 1, metrics)`.

    `batch` leaves are `(A, b, ...)`; `step` is an int32 scalar (updates applied so far). `metrics`
    holds the loss function's metrics averaged over micro-batches plus `loss`, `grad_norm` (global
    L2 norm of the averaged gradient, before clipping) and `lr` (the rate used by this update).
    """

    def loss_for_grad(trainable, frozen, micro_batch, rng):
        loss, metrics = loss_fn(cast_floating(trainable, dtype), frozen, micro_batch, rng)
        return loss.astype(jnp.float32), metrics

    grad_fn = jax.value_and_grad(loss_for_grad, has_aux=True)

    def train_step(trainable, opt_state, step, frozen, batch):
        accum = jax.tree.leaves(batch)[0].shape[0]
        rngs = jax.random.split(jax.random.fold_in(jax.random.key(seed), step), accum)

        def micro(grad_sum, xs):
            micro_batch, rng = xs
            (loss, metrics), grads = grad_fn(trainable, frozen, micro_batch, rng)
            return jax.tree.map(jnp.add, grad_sum, grads), dict(metrics, loss=loss)

        zeros = jax.tree.map(jnp.zeros_like, trainable)
        grad_sum, per_micro = jax.lax.scan(micro, zeros, (batch, rngs))
        grads = jax.tree.map(lambda g: g / accum, grad_sum)
        metrics = {k: jnp.mean(v.astype(jnp.float32), axis=0) for k, v in per_micro.items()}
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["lr"] = jnp.asarray(schedule(step), jnp.float32)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        return trainable, opt_state, step + 1, metrics

    return train_step
