import math

import jax
import jax.numpy as jnp
import numpy as np

from sycojax.objectives import cosine_similarity, distill_on_all_hidden_layers, distill_on_hidden_layer


def test_mse_hand_computed_and_last_only():
    student = jnp.array([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]])
    teacher = jnp.array([[[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    w = jnp.array([[1.0, 1.0, 0.0]])
    # position 0: (0 + 4) / 2 = 2; position 1: (9 + 16) / 2 = 12.5; position 2 has weight 0
    np.testing.assert_allclose(distill_on_hidden_layer(student, teacher, w), (2 + 12.5) / 2, rtol=1e-6)
    np.testing.assert_allclose(distill_on_hidden_layer(student, teacher, w, last_only=True), 12.5, rtol=1e-6)


def test_mse_gradient_only_to_student():
    s = jnp.array([[[1.0, 2.0]]])
    t = jnp.array([[[0.0, 0.0]]])
    gs, gt = jax.grad(lambda s, t: distill_on_hidden_layer(s, t, jnp.ones((1, 1))), argnums=(0, 1))(s, t)
    np.testing.assert_allclose(gs, [[[1.0, 2.0]]])  # d/ds mean((s - t)^2) = 2 (s - t) / D
    np.testing.assert_array_equal(gt, 0.0)


def test_cosine_loss_hand_computed():
    # two layers (L + 1 = 2), one position: layer 0 orthogonal (1 - 0), layer 1 at 60 degrees (1 - 1/2)
    student = jnp.array([[[[1.0, 0.0]]], [[[1.0, 0.0]]]])
    teacher = jnp.array([[[[0.0, 3.0]]], [[[1.0, math.sqrt(3.0)]]]])
    got = distill_on_all_hidden_layers(student, teacher, jnp.ones((1, 1)))
    np.testing.assert_allclose(got, (1.0 + 0.5) / 2, rtol=1e-6)


def test_cosine_loss_weights_and_last_only():
    # one layer, three positions with losses 0 (parallel), 1 (orthogonal), 2 (opposite)
    student = jnp.array([[[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]]])
    teacher = jnp.array([[[[5.0, 0.0], [0.0, 2.0], [-1.0, 0.0]]]])
    np.testing.assert_allclose(
        distill_on_all_hidden_layers(student, teacher, jnp.array([[1.0, 1.0, 1.0]])), 1.0, rtol=1e-6
    )
    np.testing.assert_allclose(
        distill_on_all_hidden_layers(student, teacher, jnp.array([[1.0, 1.0, 0.0]])), 0.5, rtol=1e-6
    )
    np.testing.assert_allclose(
        distill_on_all_hidden_layers(student, teacher, jnp.array([[1.0, 1.0, 1.0]]), last_only=True), 2.0, rtol=1e-6
    )


def test_cosine_zero_vector_is_finite():
    s = jnp.zeros((1, 1, 1, 3))
    t = jnp.ones((1, 1, 1, 3))
    loss, g = jax.value_and_grad(lambda s: distill_on_all_hidden_layers(s, t, jnp.ones((1, 1))))(s)
    np.testing.assert_allclose(loss, 1.0)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(cosine_similarity(jnp.array([3.0, 4.0]), jnp.array([4.0, 3.0])), 24 / 25, rtol=1e-6)
