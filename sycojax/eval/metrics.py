"""Scalar metrics on logits: token KL, perplexity, restricted-softmax probability, gap closed."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from sycojax.objectives import token_kl, token_nll, weighted_mean


@jax.jit
def mean_token_kl(
    teacher_logits: Float[Array, "b t v"], student_logits: Float[Array, "b t v"], weights: Array
) -> Float[Array, ""]:
    """Mean per-token `KL(teacher ‖ student)` in nats over the weighted positions (temperature 1).

        KL = Σ_bt w · Σ_v p_t log(p_t / p_s) / Σ_bt w,   p = softmax(logits)

    Computed in fp32 from `log_softmax` whatever the input dtype, so bf16 logits or logits in the
    thousands neither overflow nor lose the small KL values a consolidated model reaches. The
    consolidation reports' `kl_before` / `kl_after` are this number (teacher = base model with the
    context, student = model without it, on the teacher's responses).
    """
    return weighted_mean(token_kl(teacher_logits, student_logits), weights)


@functools.partial(jax.jit, static_argnames="per_sequence")
def perplexity(
    logits: Float[Array, "b t v"], targets: Int[Array, "b t"], weights: Array, per_sequence: bool = False
) -> Array:
    """`exp(mean NLL)` of the targets over the weighted positions (targets aligned to logits).

    `per_sequence=False`: one corpus-level number, `exp(Σ w·nll / Σ w)`. `per_sequence=True`: a
    `(b,)` array, `exp` of each row's own weighted mean (SyCoMode's experiments 2 and 3: the
    perplexity of one answer's tokens, `exp(−(1/n) Σ log p(answer_i))`). Rows with no weight give 1.
    """
    nll = token_nll(logits, targets)
    if not per_sequence:
        return jnp.exp(weighted_mean(nll, weights))
    return jnp.exp(jax.vmap(lambda n, w: weighted_mean(n[None], w[None]))(nll, weights))


def restricted_softmax_prob(
    logits: Float[Array, "... v"], allowed_ids: Int[Array, "k"], target_id: Int[Array, "..."]
) -> Float[Array, "..."]:
    """Probability of `target_id` under a softmax restricted to `allowed_ids`.

        P = exp(z[target]) / Σ_{a ∈ allowed} exp(z[a])

    SyCoMode experiment 1: `logits` at the position after "c d e f", `allowed_ids` the 26 letter
    tokens, `target_id` the token of "g". `target_id` must be one of `allowed_ids` (checked when
    the arguments are concrete, i.e. outside `jit`; under `jit` a missing target gives 0).
    """
    allowed = jnp.asarray(allowed_ids, jnp.int32)
    target = jnp.asarray(target_id, jnp.int32)
    if not isinstance(allowed, jax.core.Tracer) and not isinstance(target, jax.core.Tracer):
        allowed_np, target_np = np.asarray(allowed), np.asarray(target)
        if len(set(allowed_np.tolist())) != allowed_np.size:
            raise ValueError(f"allowed_ids has duplicates: {allowed_np.tolist()}")
        missing = np.setdiff1d(target_np.ravel(), allowed_np)
        if missing.size:
            raise ValueError(f"target_id {missing.tolist()} not among allowed_ids {allowed_np.tolist()}")
    return _restricted_softmax_prob(logits, allowed, target)


@jax.jit
def _restricted_softmax_prob(logits, allowed, target):
    restricted = jax.nn.log_softmax(jnp.take(logits.astype(jnp.float32), allowed, axis=-1), axis=-1)
    is_target = allowed == target[..., None]
    return jnp.sum(jnp.where(is_target, jnp.exp(restricted), 0.0), axis=-1)


def gap_closed(kl_before: float, kl_after: float) -> float:
    """Share of the teacher–student KL gap that consolidation removed: `(before − after) / before`.

    1 = the student matches the teacher, 0 = no better than without consolidation, negative =
    worse. `kl_before` must be > 0: a context that does not change the model leaves no gap.
    """
    kl_before, kl_after = float(kl_before), float(kl_after)
    if not np.isfinite(kl_before) or kl_before <= 0:
        raise ValueError(
            f"gap_closed needs kl_before > 0, got {kl_before}: the context does not change the teacher's "
            "distribution, so there is no gap to close"
        )
    return (kl_before - kl_after) / kl_before
