"""The reader: the frozen base model reads a context once; its mean-pooled hidden states feed the generator."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from sycojax.masks.core import causal_padding, positions_from_valid
from sycojax.models import ModelConfig, forward


def mean_pool(hidden_states: Float[Array, "l b t d"], weights: Float[Array, "b t"] | Bool[Array, "b t"],
              layers: tuple[int, ...]) -> Float[Array, "b n d"]:
    """Weighted mean over each row's positions of `hidden_states[layers]` (`Output.hidden_states`): `(B, n, D)`
    fp32; a row with no weight pools to 0. What `pool_context` returns, and what the teacher pass of
    `data.py` takes from the context's positions of its own forward (causal: the same states)."""
    hs = hidden_states[jnp.asarray(layers)].astype(jnp.float32)  # (n, B, T, D)
    w = weights.astype(jnp.float32)
    return jnp.einsum("nbtd,bt->bnd", hs, w) / jnp.maximum(w.sum(1), 1.0)[:, None, None]


@functools.partial(jax.jit, static_argnames=("cfg", "layers"))
def pool_context(
    params_base: dict,
    tokens: Int[Array, "b t"],
    valid: Bool[Array, "b t"],
    cfg: ModelConfig,
    layers: tuple[int, ...],
) -> Float[Array, "b n d"]:
    """Mean over each row's real tokens of the frozen model's hidden states at `layers` (`hidden_states`
    indices, `HyperConfig.depths`): `(B, len(layers), D)` fp32. Padding (left or right) is masked out of
    attention and of the mean, so a row pools the same alone or in a padded batch; a row with no real
    token pools to 0."""
    out = forward(params_base, tokens, cfg=cfg, positions=positions_from_valid(valid), mask=causal_padding(valid),
                  return_hidden=True, return_logits=False)
    return mean_pool(out.hidden_states, valid, layers)
