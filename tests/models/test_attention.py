"""The attention core's hand-written backward (probabilities recomputed, not stored) against autodiff of a
plain softmax attention: grouped KV heads, a ragged mask, a fully masked query row, and under `lax.scan`."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from sycojax.models import layers as L

B, T, S, M, G, H = 2, 7, 9, 2, 3, 8


def _inputs():
    r = np.random.default_rng(0)
    q = jnp.asarray(r.standard_normal((B, T, M * G, H)), jnp.float32)
    k = jnp.asarray(r.standard_normal((B, S, M, H)), jnp.float32)
    v = jnp.asarray(r.standard_normal((B, S, M, H)), jnp.float32)
    mask = np.asarray(r.random((B, 1, T, S)) > 0.4)
    mask[:, :, :, 0] = True
    mask[1, 0, 3, :] = False  # a query that sees nothing: uniform weights, as the forward has always given
    w = jnp.asarray(r.standard_normal((B, T, M * G, H)), jnp.float32)
    return q, k, v, jnp.asarray(mask), w


def _reference(q, k, v, mask):
    kk, vv = jnp.repeat(k, G, axis=2), jnp.repeat(v, G, axis=2)
    scores = jnp.einsum("btnh,bsnh->bnts", q, kk) / math.sqrt(H)
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    return jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(scores, -1), vv)


def test_attention_forward_and_gradients_match_autodiff():
    q, k, v, mask, w = _inputs()
    np.testing.assert_allclose(L.attention(q, k, v, mask), _reference(q, k, v, mask), atol=1e-5)
    ours = jax.grad(lambda *a: (L.attention(*a, mask) * w).sum(), argnums=(0, 1, 2))(q, k, v)
    ref = jax.grad(lambda *a: (_reference(*a, mask) * w).sum(), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_attention_gradients_under_scan_and_jit():
    q, k, v, mask, _ = _inputs()

    def stacked(attn):
        return jax.jit(jax.grad(lambda q: jax.lax.scan(lambda c, _: (attn(c, k, v, mask), None), q, None,
                                                       length=3)[0].sum()))

    np.testing.assert_allclose(stacked(L.attention)(q), stacked(_reference)(q), atol=1e-5)
