"""`layers.dot_wt`: both layouts equal a plain product (values and gradients), and XLA keeps the weight-major one."""

import re

import jax
import jax.numpy as jnp
import numpy as np

from sycojax.models import layers as L


def test_weight_major_product_equals_row_major():
    r = np.random.default_rng(0)
    x = jnp.asarray(r.standard_normal((4, 2, 24)), jnp.float32)
    w = jnp.asarray(r.standard_normal((40, 24)), jnp.float32)
    want = np.einsum("bti,oi->bto", np.asarray(x, np.float64), np.asarray(w, np.float64))
    for weight_major in (False, True):
        got = jax.jit(L.dot_wt, static_argnums=2)(x, w, weight_major)
        assert got.shape == (4, 2, 40)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_weight_major_product_is_compiled_weight_major():
    # The speed-up depends on XLA computing W xᵀ as an (o, rows) product; without the optimization barriers its
    # simplifier folds the transposes and emits the row-major (rows, o) product instead.
    x, w = jnp.ones((8, 1, 24)), jnp.ones((40, 24))

    def dot_shapes(weight_major):
        hlo = jax.jit(L.dot_wt, static_argnums=2).lower(x, w, weight_major).compile().as_text()
        return set(re.findall(r"f32\[(\d+,\d+)\]\{[0-9,]*\} (?:dot|fusion)\(", hlo))

    assert "40,8" in dot_shapes(True)
    assert "40,8" not in dot_shapes(False)


def test_gradients_equal_autodiff_of_a_plain_product():
    # `_dense`'s hand-written backward (the row-major path) and autodiff through the barriers (weight-major)
    r = np.random.default_rng(1)
    x = jnp.asarray(r.standard_normal((3, 5, 24)), jnp.float32)
    w = jnp.asarray(r.standard_normal((40, 24)), jnp.float32)
    c = jnp.asarray(r.standard_normal((3, 5, 40)), jnp.float32)

    def grads(f):
        return jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.tanh(f(x, w)) * c), argnums=(0, 1)))(x, w)

    want = grads(lambda x, w: jnp.einsum("bti,oi->bto", x, w))
    for weight_major in (False, True):
        got = grads(lambda x, w, wm=weight_major: L.dot_wt(x, w, wm))
        for g, e in zip(got, want):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5)
