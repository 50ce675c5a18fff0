"""Output-distribution distillation: full-vocabulary KL, and top-k (Cartridges-style) targets.

Notation: `z_s`, `z_t` are student / teacher logits over the vocabulary V at one position,
`T` the temperature, `p = softmax(z_t / T)` the teacher distribution, `s = softmax(z_s / T)` the
student distribution. Per-position losses are reduced by `weighted_mean` (see `weighting`).
Teacher inputs always pass through `stop_gradient`: only the student is trained.

Temperature convention: the losses are NOT multiplied by T² (upstream SyCoMode does not scale;
at the default T = 1 it makes no difference). Hinton et al. multiply by T² to keep gradient
magnitudes comparable across temperatures; a caller who wants that multiplies the result.

Top-k targets: instead of storing the teacher's full (B, T, V) distribution (V = 49,152 for
SmolLM2), `teacher_topk` keeps, per position, the k most likely token ids and their
log-probabilities. The loss renormalises them over the k ids,

    q_j = p_j / Σ_{i∈K} p_i             (j ∈ K, the stored top-k set)

and takes the cross-entropy of the student against q:

    CE(q, s) = −Σ_{j∈K} q_j log s_j = KL(q ‖ s) + H(q)

H(q) does not depend on the student, so CE and KL(q‖s) have the same gradient; subtract
`topk_entropy` to log a KL. With k = V, q = p and the loss is KL(p‖s) + H(p).

With `tail=True` the targets are NOT renormalised: the teacher's mass outside K becomes one more
class, and the loss is the cross-entropy over the (k+1)-way coarsened distributions

    CE_tail(p, s) = −Σ_{j∈K} p_j log s_j − p_rest log s_rest,
                    p_rest = 1 − Σ_{j∈K} p_j,  s_rest = 1 − Σ_{j∈K} s_j

which equals KL(p̄ ‖ s̄) + H(p̄) for the coarsened p̄, s̄ — a lower bound of the full KL(p‖s) that is exact
when the student matches the teacher's tail mass. The renormalised loss instead rewards a student that
puts ALL its mass on K, so the full-vocabulary KL it is evaluated with plateaus (the teacher keeps some
mass in the tail). `log s_rest` is computed as `log(−expm1(log Σ_K s_j))`, floored at `log 1e-6`
(float32 cannot resolve a smaller tail from the normaliser). With k = V both losses equal KL(p‖s) + H(p).

Only k student logits are gathered; the student's log-normaliser is one `logsumexp` over V. To
avoid materialising the student's (B, T, V) logits at all, `distill_topk_from_hidden` computes
the same loss from the final hidden states and the LM head in chunks over the sequence.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from sycojax.objectives.weighting import select_weights, weighted_mean


@jax.jit
def token_kl(
    teacher_logits: Float[Array, "... v"], student_logits: Float[Array, "... v"], temperature: float = 1.0
) -> Float[Array, "..."]:
    """Per-position `KL(p ‖ s) = Σ_v p_v (log p_v − log s_v)`, natural log, fp32.

    Max-subtracted, so large logits do not overflow; vocabulary entries with p_v = 0 (teacher
    logit −inf) contribute 0. Differentiable in both arguments (`_kl_core`'s hand-written backward).
    """
    return _kl_core(teacher_logits.astype(jnp.float32) / temperature, student_logits.astype(jnp.float32) / temperature)


@jax.custom_vjp
def _kl_core(t: Float[Array, "... v"], s: Float[Array, "... v"]) -> Float[Array, "..."]:
    """`KL(softmax(t) ‖ softmax(s))` per row, written as few passes over the vocabulary as it takes.

    With `m_t, m_s` the row maxima, `e_v = exp(t_v − m_t)`, `Z_t = Σ e`, `Z_s = Σ exp(s − m_s)` and the
    log-normalisers `L_t = m_t + log Z_t`, `L_s = m_s + log Z_s`:

        KL = Σ_v p_v (t_v − L_t − s_v + L_s) = (Σ_v e_v (t_v − s_v)) / Z_t − L_t + L_s

    — two reading passes (maxima; then the three sums), no (…, V) log-softmax arrays. The backward is
    one more pass: `∂KL/∂s = softmax(s) − p`, `∂KL/∂t = p ⊙ (log p − log s − KL)`. Autodiff of the
    log-softmax form instead materialises several (…, V) intermediates; on XLA:CPU this form's value
    and gradient take about half the time at (4, 256, 49152).
    """
    return _kl_fwd(t, s)[0]


def _kl_fwd(t, s):
    m_t = jnp.max(t, axis=-1, keepdims=True)
    m_s = jnp.max(s, axis=-1, keepdims=True)
    e = jnp.exp(t - m_t)
    z_t = jnp.sum(e, axis=-1)
    z_s = jnp.sum(jnp.exp(s - m_s), axis=-1)
    cross = jnp.sum(jnp.where(e > 0, e * (t - s), 0.0), axis=-1)  # p_v = 0 contributes 0, not 0·(−inf)
    lse_t = m_t[..., 0] + jnp.log(z_t)
    lse_s = m_s[..., 0] + jnp.log(z_s)
    kl = cross / z_t - lse_t + lse_s
    return kl, (t, s, lse_t, lse_s, kl)


def _kl_bwd(res, g):
    t, s, lse_t, lse_s, kl = res
    log_p = t - lse_t[..., None]
    log_q = s - lse_s[..., None]
    p = jnp.exp(log_p)
    g = g[..., None]
    d_t = g * jnp.where(p > 0, p * (log_p - log_q - kl[..., None]), 0.0)
    return d_t, g * (jnp.exp(log_q) - p)


_kl_core.defvjp(_kl_fwd, _kl_bwd)


@functools.partial(jax.jit, static_argnames="last_only")
def distill_on_output_logits(
    student_logits: Float[Array, "b t v"],
    teacher_logits: Float[Array, "b t v"],
    weights: Array,
    temperature: float = 1.0,
    last_only: bool = False,
) -> Float[Array, ""]:
    """Mean `KL(softmax(z_t/T) ‖ softmax(z_s/T))` over the weighted positions.

        loss = Σ_bt w[b,t] · KL(p[b,t] ‖ s[b,t]) / Σ_bt w[b,t]

    The two logit arrays must already be aligned position by position: the teacher saw the
    context and the student did not, so the caller slices the teacher's logits to the positions
    of the shared continuation. `last_only=True` keeps only each row's last weighted position —
    upstream SyCoMode's objective, which matched the teacher at the final position of the prompt.

    Upstream minimised the soft-label cross-entropy `−Σ p log s`; that is this KL plus the teacher
    entropy H(p), a constant: same gradient, but KL reads 0 at a perfect match.
    """
    kl = token_kl(jax.lax.stop_gradient(teacher_logits), student_logits, temperature)
    return weighted_mean(kl, select_weights(weights, last_only))


@functools.partial(jax.jit, static_argnames="k")
def teacher_topk(
    teacher_logits: Float[Array, "b t v"], k: int, temperature: float = 1.0
) -> tuple[Int[Array, "b t k"], Float[Array, "b t k"]]:
    """The teacher's k most likely tokens per position: `(indices, logprobs)` to store as targets.

    `logprobs = log softmax(z_t / T)[indices]`: full-vocabulary log-probabilities at temperature T
    (not yet renormalised over the k ids; `distill_on_topk` does that), sorted descending.
    The temperature is baked in here: pass the SAME T to `distill_on_topk`, which applies it to
    the student only.
    """
    v = teacher_logits.shape[-1]
    if not 1 <= k <= v:
        raise ValueError(f"top-k needs 1 <= k <= vocabulary size {v}, got k={k}")
    log_p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    values, indices = jax.lax.top_k(log_p, k)
    return indices.astype(jnp.int32), values


@jax.jit
def topk_entropy(topk_logprobs: Float[Array, "... k"]) -> Float[Array, "..."]:
    """`H(q) = −Σ_j q_j log q_j` of the renormalised top-k teacher distribution."""
    log_q = jax.nn.log_softmax(topk_logprobs.astype(jnp.float32), axis=-1)
    q = jnp.exp(log_q)
    return -jnp.sum(jnp.where(q > 0, q * log_q, 0.0), axis=-1)


TAIL_FLOOR = 1e-6  # smallest student tail mass `tail=True` resolves (see the module docstring)


def _topk_cross_entropy(student_logits, topk_idx, topk_logprobs, temperature, tail: bool = False):
    """Per-position `−Σ_{j∈K} q_j (z_s[j]/T − logsumexp(z_s/T))` with q = renormalised top-k; with `tail`,
    `−Σ_{j∈K} p_j log s_j − p_rest log s_rest` (module docstring)."""
    z = student_logits.astype(jnp.float32) / temperature
    log_norm = jax.nn.logsumexp(z, axis=-1)  # (..,)
    log_s = jnp.take_along_axis(z, topk_idx.astype(jnp.int32), axis=-1) - log_norm[..., None]  # (.., k)
    lp = jax.lax.stop_gradient(topk_logprobs).astype(jnp.float32)
    if not tail:
        return -jnp.sum(jax.nn.softmax(lp, axis=-1) * log_s, axis=-1)
    p_rest = jnp.clip(-jnp.expm1(jax.nn.logsumexp(lp, axis=-1)), 0.0, 1.0)
    log_s_in = jnp.minimum(jax.nn.logsumexp(log_s, axis=-1), math.log1p(-TAIL_FLOOR))
    log_s_rest = jnp.log(-jnp.expm1(log_s_in))
    return -(jnp.sum(jnp.exp(lp) * log_s, axis=-1) + p_rest * log_s_rest)


@functools.partial(jax.jit, static_argnames=("last_only", "tail"))
def distill_on_topk(
    student_logits: Float[Array, "b t v"],
    topk_idx: Int[Array, "b t k"],
    topk_logprobs: Float[Array, "b t k"],
    weights: Array,
    temperature: float = 1.0,
    last_only: bool = False,
    tail: bool = False,
) -> Float[Array, ""]:
    """Mean cross-entropy of the student against the renormalised top-k teacher targets.

        loss = Σ_bt w · [ −Σ_{j∈K} q_j log softmax(z_s/T)_j ] / Σ_bt w,   q = softmax(topk_logprobs)

    `(topk_idx, topk_logprobs)` come from `teacher_topk` (its temperature already applied; `T`
    here scales the student only). Equals `KL(q ‖ s) + H(q)`; with `tail`, the teacher's mass outside
    the top k is one more class instead of being renormalised away (see the module docstring).
    """
    ce = _topk_cross_entropy(student_logits, topk_idx, topk_logprobs, temperature, tail)
    return weighted_mean(ce, select_weights(weights, last_only))


@functools.partial(jax.jit, static_argnames=("chunk", "tail"))
def distill_topk_from_hidden(
    hidden: Float[Array, "b t d"],
    lm_head_weight: Float[Array, "v d"],
    topk_idx: Int[Array, "b t k"],
    topk_logprobs: Float[Array, "b t k"],
    weights: Array,
    temperature: float = 1.0,
    chunk: int = 128,
    tail: bool = False,
) -> Float[Array, ""]:
    """`distill_on_topk` (same `tail`) computed from hidden states, `chunk` positions at a time.

    `hidden` is the LM head's input (the final hidden states AFTER the final norm) and
    `lm_head_weight` the head in PyTorch `(V, D)` layout (the embedding matrix for tied models);
    logits are `z = h Wᵀ` in fp32. The sequence is padded to a multiple of `min(chunk, T)`
    (padding gets weight 0) and scanned; each chunk's loss is wrapped in `jax.checkpoint`, so neither the
    forward nor the backward pass ever holds more than a (B, chunk, V) block of logits — the
    backward recomputes each chunk's logits instead of storing them. Value and gradients equal
    `distill_on_topk(h Wᵀ, ...)` up to float rounding.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    b, t, _ = hidden.shape
    chunk = max(1, min(chunk, t))
    n = -(-t // chunk)
    pad = n * chunk - t
    w = weights.astype(jnp.float32)

    def to_chunks(x):
        x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return x.reshape(b, n, chunk, *x.shape[2:]).swapaxes(0, 1)  # (n, b, chunk, ...)

    @functools.partial(jax.checkpoint, prevent_cse=False)  # safe inside scan (JAX docs)
    def chunk_sum(head, h, idx, lp, wc):
        z = jnp.einsum("bcd,vd->bcv", h, head, preferred_element_type=jnp.float32)
        ce = _topk_cross_entropy(z, idx, lp, temperature, tail)
        return jnp.sum(jnp.where(wc > 0, ce, 0.0) * wc)

    def step(total, xs):
        return total + chunk_sum(lm_head_weight, *xs), None

    xs = (to_chunks(hidden), to_chunks(topk_idx), to_chunks(topk_logprobs), to_chunks(w))
    total, _ = jax.lax.scan(step, jnp.zeros((), jnp.float32), xs)
    denom = jnp.sum(w)
    return total / jnp.where(denom > 0, denom, 1.0)
