"""`layers.dot_wt`: the weight-major product equals the row-major one, and XLA keeps its layout."""

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
