"""The small pieces both architectures share: linear (with the LoRA seam), norms, RoPE, attention.

Conventions: activations `(B, T, D)`; weights in PyTorch `(out, in)` layout as loaded from Hugging
Face; norms, softmax and RoPE in fp32 whatever the compute dtype.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from sycojax.models.config import ModelConfig

# --------------------------------------------------------------------------- linear + LoRA


# `dot_wt(weight_major=True)` pays off up to about this many rows (measured on XLA:CPU, see its docstring).
WEIGHT_MAJOR_MAX_ROWS = 128


def dot_wt(x: Float[Array, "... i"], w: Float[Array, "o i"], weight_major: bool = False) -> Float[Array, "... o"]:
    """`x Wᵀ` over the last axis of `x`.

    `weight_major=True` computes it as `(W xᵀ)ᵀ`, the product laid out `(o, rows)`. For a few rows (decoding)
    XLA:CPU then streams the weight faster: a 30-layer MLP chain (d=576, f=1536) takes 13.4 vs 22.4 ms at 8
    rows, 17.6 vs 31.6 ms at 16, 75 vs 90 ms at 128, the same from ~256 rows; SmolLM2's batch-1 decoding
    ~8% less time (4.21 vs 4.56 s for 128 tokens, mean of 4 alternating runs; there the row-major product
    is XLA's own fused loop). The optimization barriers keep XLA from folding the two transposes back into
    the row-major product (without them it compiles to the same program). The row-major product
    differentiates through `_dense`'s backward.
    """
    rows = x.reshape(-1, x.shape[-1])
    if weight_major:
        barrier = jax.lax.optimization_barrier
        y = barrier(jnp.dot(w, barrier(rows.T))).T
    else:
        y = _dense(rows, w)
    return y.reshape(*x.shape[:-1], w.shape[0])


def dequantize(w: Int[Array, "... o i"], scale: Float[Array, "... o g"] | Float[Array, "... o"], dtype=None) -> Array:
    """`scale ⊙ w` for an int8 `w` and its scales: one per output channel `(..., o)`, or one per group of
    `i / g` consecutive inputs `(..., o, g)` (`quant.quantize_int8`); in `dtype` (None: the scales')."""
    dtype = dtype or scale.dtype
    if scale.ndim == w.ndim - 1:
        return w.astype(dtype) * scale.astype(dtype)[..., None]
    *lead, o, i = w.shape
    g = scale.shape[-1]
    groups = w.reshape(*lead, o, g, i // g).astype(dtype) * scale.astype(dtype)[..., None]
    return groups.reshape(*lead, o, i)


def dot_wt_int8(x: Float[Array, "... i"], w: Int[Array, "o i"], scale: Array) -> Float[Array, "... o"]:
    """`x (s ⊙ W)ᵀ` for a weight-only int8 `W` with scales `s` per output channel `(o,)` or per group `(o, g)`
    (`dequantize`), in `x`'s dtype: the weight is read as int8 and converted inside the product.

    Per output channel `(x Wᵀ) · s`, per group `x (s ⊙ W)ᵀ` (the scale must come before the sum over inputs),
    fp32 accumulation, with `x` rounded to bf16 first. On XLA:CPU one row's product with a converted weight
    compiles to a single loop, and that loop also recomputes `x`'s elementwise producers (the RMSNorm, the
    SiLU gate) for every output unless one of them is "expensive" — an f32 → bf16 rounding is: then `x` is
    read as one vector. SmolLM2-135M batch-1 greedy decode, ms per step (2-core AMD EPYC, same process):

      fp32 weights                                              22.4
      per channel, x → bf16, scale after (this)                  6.3   per group of 32 (this)   7.5
      per channel, x fp32 (recomputed in the loop)              13.6   per group of 32         14.3
      per channel, x as bf16 hi + lo (~fp32, 16-bit mantissa)    9.5   per group of 32          9.8
      bf16 × bf16 product (XLA widens both to fp32 in the loop) 10.5
      int8 activations, int8 × int8 → int32 (W converted to int32 first)   70
      without the optimization barrier (XLA hoists the conversion out of the decoding loop and reads an
      fp32 copy of every weight)                                ~24

    The barrier ties the weight to this call's `x`, so the conversion stays inside the loop. The products
    are row-major: in `dot_wt`'s weight-major layout XLA converts the whole weight first. At more than a few
    rows (prefill, batched decoding) XLA converts each weight before a GEMM: no faster than fp32 there.
    """
    rows = x.reshape(-1, x.shape[-1])
    rows, w = jax.lax.optimization_barrier((rows, w))
    rows = rows.astype(jnp.bfloat16).astype(jnp.float32)
    if scale.ndim == 1:
        y = jnp.dot(rows, w.astype(jnp.float32).T) * scale.astype(jnp.float32)
    else:
        y = jnp.dot(rows, dequantize(w, scale, jnp.float32).T)
    return y.astype(x.dtype).reshape(*x.shape[:-1], w.shape[0])


@jax.custom_vjp
def _dense(x: Float[Array, "n i"], w: Float[Array, "o i"]) -> Float[Array, "n o"]:
    """`x Wᵀ`, with a backward that keeps XLA:CPU from fusing `gᵀ` into `g`'s producer.

    Autodiff's `∂W = gᵀ x` lets XLA fuse the transposition of `g` (n × o) into the elementwise backward
    that makes `g` (SiLU's, for the MLP's gate/up): one loop reading four stacked residuals and writing
    transposed, ~30 ms a layer under the layer scan (full fine-tuning of SmolLM2, B=4 T=256). Behind an
    optimization barrier `g` is computed row-major and transposed on its own: the full-weights step
    6.2 → 5.9 s, the LoRA step 4.43 → 4.30 s (where `∂W` is never used, XLA drops it). Same math.
    """
    return jnp.dot(x, w.T)


def _dense_fwd(x, w):
    return jnp.dot(x, w.T), (x, w)


def _dense_bwd(res, g):
    x, w = res
    return jnp.dot(g, w), jnp.dot(jax.lax.optimization_barrier(g).T, x)


_dense.defvjp(_dense_fwd, _dense_bwd)


def linear(
    x: Float[Array, "b t i"],
    p: dict,
    lora: dict | None = None,
    lora_scale: float = 1.0,
    gate: Float[Array, "b t"] | None = None,
    dtype=None,
    weight_major: bool = False,
    lora_per_row: bool = False,
) -> Float[Array, "b t o"]:
    """`y = x Wᵀ + b (+ s · g ⊙ (x Aᵀ) Bᵀ)`.

    `p = {"weight": (o, i), "bias"?: (o,)}`, or an int8 weight with its `"weight_scale"` (`quant.quantize_int8`,
    dequantised inside the product: `dot_wt_int8`); `lora = {"lora_A": (r, i), "lora_B": (o, r)}` (PEFT names),
    `s = alpha / r` and `g` an optional per-position gate (1 where the adapter applies). `weight_major`:
    how `x Wᵀ` is laid out (`dot_wt`; the forward sets it for few-row inference calls). `lora_per_row`:
    the LoRA has a leading batch axis, `lora_A (b, r, i)`, `lora_B (b, o, r)`: row `b` gets its own
    (`lora_delta_rows`).
    """
    dtype = dtype or x.dtype
    xc = x.astype(dtype)
    if "weight_scale" in p:
        y = dot_wt_int8(xc, p["weight"], p["weight_scale"])
    else:
        y = dot_wt(xc, p["weight"].astype(dtype), weight_major)
    if "bias" in p:
        y = y + p["bias"].astype(dtype)
    if lora is not None:
        a_w, b_w = lora["lora_A"].astype(dtype), lora["lora_B"].astype(dtype)
        if lora_per_row:
            d = lora_delta_rows(xc, a_w, b_w, lora_scale)
        else:
            b, t, i = xc.shape
            d = lora_delta(xc.reshape(b * t, i), a_w, b_w, lora_scale).reshape(b, t, -1)
        if gate is not None:
            d = d * gate[..., None].astype(dtype)
        y = y + d
    return y


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def lora_delta(x: Float[Array, "n i"], a_w: Float[Array, "r i"], b_w: Float[Array, "o r"], scale: float):
    """`s · (x Aᵀ) Bᵀ`, with a hand-written backward that keeps XLA:CPU from transposing `(n, o)` arrays.

    Autodiff's `∂B = s · gᵀ a` makes XLA materialise `gᵀ` (n × o, fused with the upstream elementwise
    backward into a strided loop, ~10% of a LoRA step on CPU); `(aᵀ g)ᵀ` transposes the small
    `a (n × r)` instead. Same math:  ∂B = s (aᵀ g)ᵀ,  ∂a = s g B,  ∂A = ∂aᵀ x,  ∂x = ∂a A.
    """
    return jnp.dot(jnp.dot(x, a_w.T), b_w.T) * scale


def _lora_delta_fwd(x, a_w, b_w, scale):
    a = jnp.dot(x, a_w.T)
    return jnp.dot(a, b_w.T) * scale, (x, a, a_w, b_w)


def _lora_delta_bwd(scale, res, g):
    x, a, a_w, b_w = res
    gs = g * scale
    d_act = jnp.dot(gs, b_w)  # (n, r)
    return jnp.dot(d_act, a_w), jnp.dot(d_act.T, x), jnp.dot(a.T, gs).T


lora_delta.defvjp(_lora_delta_fwd, _lora_delta_bwd)


def lora_delta_rows(
    x: Float[Array, "b t i"], a_w: Float[Array, "b r i"], b_w: Float[Array, "b o r"], scale: float
) -> Float[Array, "b t o"]:
    """`lora_delta` with a LoRA per batch row: `s · (x_b A_bᵀ) B_bᵀ` for each row `b` (two batched matmuls)."""
    return jnp.einsum("btr,bor->bto", jnp.einsum("bti,bri->btr", x, a_w), b_w) * scale


# --------------------------------------------------------------------------- norms


def rms_norm(x: Float[Array, "... d"], weight: Float[Array, "d"], eps: float) -> Float[Array, "... d"]:
    """`x / sqrt(mean(x²) + eps) · w`, in fp32 (as HF LlamaRMSNorm)."""
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (weight.astype(jnp.float32) * x32).astype(dtype)


def layer_norm(x: Float[Array, "... d"], p: dict, eps: float) -> Float[Array, "... d"]:
    """`(x − μ) / sqrt(σ² + eps) · w + b`, in fp32."""
    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    mu = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mu), axis=-1, keepdims=True)
    y = (x32 - mu) * jax.lax.rsqrt(var + eps)
    return (y * p["weight"].astype(jnp.float32) + p["bias"].astype(jnp.float32)).astype(dtype)


# --------------------------------------------------------------------------- RoPE


def inv_frequencies(cfg: ModelConfig) -> np.ndarray:
    """HF's `inv_freq` (fp32), with the llama3 frequency scaling when configured."""
    dim = cfg.rot_dim
    inv = (1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))).astype(
        np.float32
    )
    rs = cfg.rope_scaling
    if rs is None:
        return inv
    low_wl = rs.original_max_position_embeddings / rs.low_freq_factor
    high_wl = rs.original_max_position_embeddings / rs.high_freq_factor
    wl = 2 * math.pi / inv
    scaled = np.where(wl > low_wl, inv / rs.factor, inv)
    smooth = ((rs.original_max_position_embeddings / wl - rs.low_freq_factor)
              / (rs.high_freq_factor - rs.low_freq_factor))
    smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled
    medium = ~(wl < high_wl) & ~(wl > low_wl)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(cfg: ModelConfig, positions: Int[Array, "b t"]) -> tuple[Array, Array]:
    """cos/sin tables `(B, T, rot_dim)` in HF's concatenated (`rotate_half`) layout."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_frequencies(cfg))
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: Float[Array, "b t n h"], cos: Array, sin: Array) -> Float[Array, "b t n h"]:
    """`x·cos + rotate_half(x)·sin` on the first `rot_dim` channels (all of them unless partial rotary)."""
    rot = cos.shape[-1]
    xr, xp = x[..., :rot], x[..., rot:]
    dtype = x.dtype
    xr = xr.astype(jnp.float32)
    x1, x2 = jnp.split(xr, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    c, s = cos[:, :, None, :], sin[:, :, None, :]
    out = (xr * c + rotated * s).astype(dtype)
    return jnp.concatenate([out, xp], axis=-1) if xp.shape[-1] else out


# --------------------------------------------------------------------------- attention

ATTENTION_IMPLS = ("xla", "cudnn")


def attention(
    q: Float[Array, "b t n h"],
    k: Float[Array, "b s m h"],
    v: Float[Array, "b s m h"],
    mask: Bool[Array, "b 1 t s"],
    impl: str = "xla",
) -> Float[Array, "b t n h"]:
    """Softmax attention with grouped KV heads (`n = m · groups`) and an explicit boolean mask.

    `impl="xla"` is the einsum reference (softmax in fp32); `impl="cudnn"` calls
    `jax.nn.dot_product_attention(implementation="cudnn")` (GPU only).
    """
    if impl == "cudnn":
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
    if impl != "xla":
        raise ValueError(f"unknown attention impl {impl!r}; choose one of {ATTENTION_IMPLS}")
    return attention_kv_major(q, *kv_head_major(k, v), mask)


def kv_head_major(k: Float[Array, "b s m h"], v: Float[Array, "b s m h"]) -> tuple[Array, Array]:
    """Keys as (b, m, h, s) and values as (b, m, s, h): the layouts `attention_kv_major`'s matmuls read."""
    return jnp.transpose(k, (0, 2, 3, 1)), jnp.transpose(v, (0, 2, 1, 3))


def kv_seq_major(k_t: Float[Array, "b m h s"], v_m: Float[Array, "b m s h"]) -> tuple[Array, Array]:
    """Inverse of `kv_head_major`: both back to (b, s, m, h)."""
    return jnp.transpose(k_t, (0, 3, 1, 2)), jnp.transpose(v_m, (0, 2, 1, 3))


def attention_kv_major(
    q: Float[Array, "b t n h"],
    k_t: Float[Array, "b m h s"],
    v_m: Float[Array, "b m s h"],
    mask: Bool[Array, "b 1 t s"],
) -> Float[Array, "b t n h"]:
    """`attention` with keys and values already head-major (`k_t = kᵀ` per head, `kv_head_major`).

    Layout chosen for XLA:CPU (measured per layer vs the plain einsum: forward ~1.7x, forward+backward
    ~1.2x faster): queries as (b, m, g·t, h) so both products are plain batched matmuls with no transposed
    (t × s) copies, and the softmax normalisation applied to the (t × h) output instead of the (t × s)
    probabilities.
    """
    m = k_t.shape[1]
    return _from_query_groups(_attention_core(_query_groups(q, m), k_t, v_m, mask), q.shape, m)


def attention_merged_cache(
    q: Float[Array, "b t n h"],
    k_t: Float[Array, "bm h s"],
    v_m: Float[Array, "bm s h"],
    mask: Bool[Array, "b 1 t s"],
) -> Float[Array, "b t n h"]:
    """`attention_kv_major` over a decoding cache stored with batch and KV heads merged on one axis
    (`model.unstack_cache`): every product then reads the cache buffer as it is. Any reshape of the
    freshly updated buffer for the products (at B = 1 XLA drops the unit batch axis) makes XLA duplicate
    the in-place update into it, which copies the cache twice per layer and token.
    """
    b = q.shape[0]
    m = k_t.shape[0] // b
    qg = _query_groups(q, m).reshape(b * m, 1, -1, q.shape[-1])
    out = _attention_core(qg, k_t[:, None], v_m[:, None], jnp.repeat(mask, m, axis=0))
    return _from_query_groups(out, q.shape, m)


def _query_groups(q: Float[Array, "b t n h"], m: int) -> Float[Array, "b m gt h"]:
    """Queries as (b, m, g·t, h): the g query heads sharing each of the m KV heads, positions inner."""
    b, t, n, h = q.shape
    return jnp.transpose(q.reshape(b, t, m, n // m, h), (0, 2, 3, 1, 4)).reshape(b, m, -1, h)


def _from_query_groups(out: Array, shape: tuple[int, ...], m: int) -> Float[Array, "b t n h"]:
    """Inverse of `_query_groups` for an output of `shape` (b, t, n, h), from any leading (b, m) / (b·m, 1)."""
    b, t, n, h = shape
    return jnp.transpose(out.reshape(b, m, n // m, t, h), (0, 3, 1, 2, 4)).reshape(b, t, n, h)


def _scores(qg, k_t, mask):
    """Masked, scaled scores `(b, m, g, t, s)` in fp32 for queries `qg (b, m, g·t, h)`."""
    b, m, q, h = qg.shape
    t, s = mask.shape[2], k_t.shape[3]
    scores = jnp.einsum("bmqh,bmhs->bmqs", qg, k_t).astype(jnp.float32).reshape(b, m, q // t, t, s) / math.sqrt(h)
    return jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)


@jax.custom_vjp
def _attention_core(qg, k_t, v_m, mask):
    """`softmax(q kᵀ/√h + mask) v` on the head-major layouts, `(b, m, g·t, h)`; see `_attention_core_bwd`."""
    return _attention_core_fwd(qg, k_t, v_m, mask)[0]


def _attention_core_fwd(qg, k_t, v_m, mask):
    b, m, q, _ = qg.shape
    scores = _scores(qg, k_t, mask)
    mx = scores.max(-1, keepdims=True)
    e = jnp.exp(scores - mx)
    denom = e.sum(-1)
    out = jnp.einsum("bmqs,bmsh->bmqh", e.reshape(b, m, q, -1).astype(v_m.dtype), v_m)
    out = out / denom.reshape(b, m, q)[..., None].astype(out.dtype)
    # (b, m, g, t) each: all the backward needs of the probabilities. Not a single log-normaliser `mx + log
    # denom`: for a query that sees no key, mx = finfo.min absorbs log denom and the weights would come out 1.
    return out, (qg, k_t, v_m, mask, out, mx[..., 0], denom)


def _attention_core_bwd(res, d_out):
    """Flash-attention-style backward: the probabilities are recomputed from the scores and the saved
    row max and normaliser instead of being kept. Under `lax.scan` autodiff would otherwise stack every layer's
    `(b, m, g, t, s)` probabilities (and the exp before them) for the backward pass: the largest residuals of
    a training step, whose zero-filling and strided writes cost more on XLA:CPU than one more `q kᵀ`.

        p = exp(scores − max) / Σ,  dv = pᵀ dout,  dp = dout vᵀ,  ds = p ⊙ (dp − rowsum(dout ⊙ out)),
        dq = ds k / √h,  dkᵀ = qᵀ ds / √h      (ds = 0 where masked; the mask gets no cotangent)
    """
    qg, k_t, v_m, mask, out, mx, denom = res
    b, m, q, h = qg.shape
    p = (jnp.exp(_scores(qg, k_t, mask) - mx[..., None]) / denom[..., None]).reshape(b, m, q, -1)  # masked: 0
    d_out32 = d_out.astype(jnp.float32)
    dv = jnp.einsum("bmqs,bmqh->bmsh", p.astype(v_m.dtype), d_out.astype(v_m.dtype))
    dp = jnp.einsum("bmqh,bmsh->bmqs", d_out, v_m).astype(jnp.float32)
    ds = p * (dp - jnp.sum(d_out32 * out.astype(jnp.float32), -1, keepdims=True)) / math.sqrt(h)
    # a masked score is a constant: no gradient (matters only for a query that sees no key, where p ≠ 0)
    ds = jnp.where(mask[:, :, None], ds.reshape(b, m, -1, mask.shape[2], ds.shape[-1]), 0.0).reshape(ds.shape)
    dq = jnp.einsum("bmqs,bmhs->bmqh", ds.astype(qg.dtype), k_t)
    dk_t = jnp.einsum("bmqh,bmqs->bmhs", qg, ds.astype(qg.dtype))
    return dq.astype(qg.dtype), dk_t.astype(k_t.dtype), dv.astype(v_m.dtype), None


_attention_core.defvjp(_attention_core_fwd, _attention_core_bwd)


def attention_with_cache(
    q: Float[Array, "b t n h"],
    k_old: Float[Array, "b s m h"],
    v_old: Float[Array, "b s m h"],
    mask_old: Bool[Array, "b 1 t s"],
    k_new: Float[Array, "b t m h"],
    v_new: Float[Array, "b t m h"],
    mask_new: Bool[Array, "b 1 t t"],
    impl: str = "xla",
) -> Float[Array, "b t n h"]:
    """Attention over two key sets (a cache and this call's keys) with ONE softmax, without concatenating
    the cache: equal to `attention(q, [k_old; k_new], [v_old; v_new], [mask_old, mask_new])`."""
    if impl != "xla":
        k = jnp.concatenate([k_old, k_new], axis=1)
        v = jnp.concatenate([v_old, v_new], axis=1)
        return attention(q, k, v, jnp.concatenate([mask_old, mask_new], axis=-1), impl=impl)
    b, t, n, h = q.shape
    m = k_old.shape[2]
    qg = q.reshape(b, t, m, n // m, h)
    neg = jnp.finfo(jnp.float32).min
    s_old = jnp.einsum("btmgh,bsmh->bmgts", qg, k_old).astype(jnp.float32) / math.sqrt(h)
    s_new = jnp.einsum("btmgh,bsmh->bmgts", qg, k_new).astype(jnp.float32) / math.sqrt(h)
    s_old = jnp.where(mask_old[:, :, None], s_old, neg)
    s_new = jnp.where(mask_new[:, :, None], s_new, neg)
    mx = jnp.maximum(s_old.max(-1, keepdims=True), s_new.max(-1, keepdims=True))
    e_old, e_new = jnp.exp(s_old - mx), jnp.exp(s_new - mx)
    denom = e_old.sum(-1, keepdims=True) + e_new.sum(-1, keepdims=True)
    out = jnp.einsum("bmgts,bsmh->btmgh", (e_old / denom).astype(v_old.dtype), v_old)
    out = out + jnp.einsum("bmgts,bsmh->btmgh", (e_new / denom).astype(v_new.dtype), v_new)
    return out.reshape(b, t, n, h)


def update_cache(cache_kv: Array, new: Array, index) -> Array:
    """Write `new (B, T, m, h)` into the preallocated `cache_kv (B, S, m, h)` at sequence `index`."""
    return jax.lax.dynamic_update_slice(cache_kv, new.astype(cache_kv.dtype), (0, index, 0, 0))
