"""Hidden-state distillation (SyCoMode's `distill_on_hidden_layer`, `distill_on_all_hidden_layers`).

Student and teacher hidden states must already be aligned position by position (the caller
slices the teacher's states to the positions the student also sees). Teacher inputs pass through
`stop_gradient`. `last_only=True` keeps only each row's last weighted position, as upstream did.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from sycojax.objectives.weighting import select_weights, weighted_mean

COSINE_EPS = 1e-8


@functools.partial(jax.jit, static_argnames="last_only")
def distill_on_hidden_layer(
    student_h: Float[Array, "b t d"],
    teacher_h: Float[Array, "b t d"],
    weights: Array,
    last_only: bool = False,
) -> Float[Array, ""]:
    """Mean squared error between final hidden states, averaged over D then over weighted positions.

        loss = Σ_bt w[b,t] · (1/D) Σ_d (h_s[b,t,d] − h_t[b,t,d])² / Σ_bt w[b,t]

    With one position this is `torch.nn.MSELoss()` on the last hidden state, as upstream.
    """
    diff = student_h.astype(jnp.float32) - jax.lax.stop_gradient(teacher_h).astype(jnp.float32)
    return weighted_mean(jnp.mean(diff * diff, axis=-1), select_weights(weights, last_only))


@jax.jit
def cosine_similarity(a: Float[Array, "... d"], b: Float[Array, "... d"]) -> Float[Array, "..."]:
    """`a·b / sqrt(max(|a|²·|b|², eps²))` (torch's `CosineSimilarity` clamp; no NaN at zero vectors)."""
    a = a.astype(jnp.float32)
    b = b.astype(jnp.float32)
    denom = jnp.sum(a * a, axis=-1) * jnp.sum(b * b, axis=-1)
    return jnp.sum(a * b, axis=-1) * jax.lax.rsqrt(jnp.maximum(denom, COSINE_EPS**2))


@functools.partial(jax.jit, static_argnames="last_only")
def distill_on_all_hidden_layers(
    student_hs: Float[Array, "l b t d"],
    teacher_hs: Float[Array, "l b t d"],
    weights: Array,
    last_only: bool = False,
) -> Float[Array, ""]:
    """Cosine loss over every hidden state (embeddings + each block: L+1 layers).

    loss = Σ_bt w[b,t] · (1/(L+1)) Σ_l (1 − cos(h_s[l,b,t], h_t[l,b,t])) / Σ_bt w[b,t]
    """
    cos = cosine_similarity(student_hs, jax.lax.stop_gradient(teacher_hs))  # (l, b, t)
    return weighted_mean(jnp.mean(1.0 - cos, axis=0), select_weights(weights, last_only))
