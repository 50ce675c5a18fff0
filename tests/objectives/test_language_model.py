import math

import jax
import jax.numpy as jnp
import numpy as np

from sycojax.objectives import causal_language_model, next_token_targets

LN3 = math.log(3.0)


def test_causal_language_model_hand_computed():
    # V = 2; logits [0, ln 3] give probabilities [1/4, 3/4].
    logits = jnp.array([[[0.0, LN3], [0.0, LN3], [5.0, -5.0]]])
    targets = jnp.array([[1, 0, 1]])
    weights = jnp.array([[1.0, 1.0, 0.0]])
    expected = (-math.log(3 / 4) - math.log(1 / 4)) / 2
    np.testing.assert_allclose(causal_language_model(logits, targets, weights), expected, rtol=1e-6)


def test_causal_language_model_soft_weights_and_nan_masking():
    logits = jnp.array([[[0.0, LN3], [0.0, LN3], [jnp.nan, jnp.nan]]])
    targets = jnp.array([[1, 0, 1]])
    weights = jnp.array([[3.0, 1.0, 0.0]])
    expected = (3 * -math.log(3 / 4) + 1 * -math.log(1 / 4)) / 4
    np.testing.assert_allclose(causal_language_model(logits, targets, weights), expected, rtol=1e-6)


def test_causal_language_model_zero_weights_is_zero():
    logits = jnp.zeros((1, 2, 4))
    assert float(causal_language_model(logits, jnp.zeros((1, 2), jnp.int32), jnp.zeros((1, 2)))) == 0.0


def test_causal_language_model_matches_numpy_softmax_and_jits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32) * 3
    targets = rng.integers(0, 7, size=(2, 5))
    weights = rng.integers(0, 2, size=(2, 5)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    nll = -np.log(np.take_along_axis(probs, targets[..., None], -1)[..., 0])
    expected = (nll * weights).sum() / weights.sum()
    got = jax.jit(causal_language_model)(logits, targets, weights)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_next_token_targets_shift_and_padding():
    tokens = jnp.array([[5, 6, 7, 0], [0, 8, 9, 4]])
    valid = jnp.array([[1, 1, 1, 0], [0, 1, 1, 1]], bool)
    targets, weights = next_token_targets(tokens, valid)
    np.testing.assert_array_equal(targets, [[6, 7, 0, 0], [8, 9, 4, 0]])
    np.testing.assert_array_equal(weights, [[1, 1, 0, 0], [0, 1, 1, 0]])


def test_row_nll_is_the_per_row_weighted_mean_and_ignores_unweighted_non_vocab_targets():
    from sycojax.objectives import row_nll, token_nll  # noqa: PLC0415

    logits = jax.random.normal(jax.random.key(0), (2, 4, 7))
    targets = jnp.array([[1, 2, 3, 4], [5, 6, 99, 99]])  # 99: not a vocabulary id, weight 0
    weights = jnp.array([[1.0, 1.0, 0.0, 2.0], [1.0, 1.0, 0.0, 0.0]])
    got = np.asarray(row_nll(logits, targets, weights))
    nll = np.asarray(token_nll(logits, jnp.minimum(targets, 6)))
    want = [(nll[0, 0] + nll[0, 1] + 2 * nll[0, 3]) / 4, (nll[1, 0] + nll[1, 1]) / 2]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert float(row_nll(logits, targets, jnp.zeros_like(weights))[0]) == 0.0
