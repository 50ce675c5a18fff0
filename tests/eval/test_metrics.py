import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sycojax.eval import gap_closed, mean_token_kl, perplexity, restricted_softmax_prob

LN3 = math.log(3.0)


def test_mean_token_kl_hand_computed_and_weighted():
    # position 0: teacher [1/4, 3/4] vs student uniform; position 1: identical; position 2 weight 0
    teacher = jnp.array([[[0.0, LN3], [2.0, 1.0], [9.0, 0.0]]])
    student = jnp.array([[[0.0, 0.0], [2.0, 1.0], [0.0, 9.0]]])
    kl0 = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    got = mean_token_kl(teacher, student, jnp.array([[1.0, 1.0, 0.0]]))
    np.testing.assert_allclose(got, kl0 / 2, rtol=1e-6)


def test_mean_token_kl_argument_order_is_teacher_first():
    # KL(p || s) != KL(s || p): p = [1/4, 3/4], s = [1/2, 1/2]
    p = jnp.array([[[0.0, LN3]]])
    s = jnp.zeros((1, 1, 2))
    np.testing.assert_allclose(
        mean_token_kl(p, s, jnp.ones((1, 1))), 0.25 * math.log(0.5) + 0.75 * math.log(1.5), rtol=1e-6
    )
    np.testing.assert_allclose(
        mean_token_kl(s, p, jnp.ones((1, 1))), 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0), rtol=1e-6
    )


def test_mean_token_kl_stable_in_fp32_for_bf16_and_large_logits():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(2, 3, 50)).astype(np.float32)
    # a constant shift of 3e4 changes no distribution; naive exp would overflow
    teacher = jnp.asarray(base + 3e4)
    student = jnp.asarray(base * 0.5 - 3e4)
    w = jnp.ones((2, 3))
    ref = mean_token_kl(jnp.asarray(base), jnp.asarray(base * 0.5), w)
    got = mean_token_kl(teacher, student, w)
    assert np.isfinite(got) and float(got) > 0
    # fp32 at |z| ~ 3e4 keeps ~2e-3 absolute resolution; the KL must agree to that level
    np.testing.assert_allclose(got, ref, atol=5e-3)
    got_bf16 = mean_token_kl(jnp.asarray(base, jnp.bfloat16), jnp.asarray(base * 0.5, jnp.bfloat16), w)
    assert got_bf16.dtype == jnp.float32
    np.testing.assert_allclose(got_bf16, ref, rtol=3e-2)
    np.testing.assert_allclose(mean_token_kl(teacher, teacher, w), 0.0, atol=1e-6)


def test_perplexity_hand_computed():
    # V = 2, p = [1/4, 3/4] at every position
    logits = jnp.tile(jnp.array([0.0, LN3]), (2, 2, 1))
    targets = jnp.array([[1, 0], [1, 1]])
    w = jnp.array([[1.0, 1.0], [1.0, 0.0]])
    corpus = math.exp((-math.log(3 / 4) - math.log(1 / 4) - math.log(3 / 4)) / 3)
    np.testing.assert_allclose(perplexity(logits, targets, w), corpus, rtol=1e-6)
    rows = perplexity(logits, targets, w, per_sequence=True)
    np.testing.assert_allclose(rows, [math.sqrt(4 / 3 * 4), 4 / 3], rtol=1e-6)
    # a uniform model over V has perplexity V
    np.testing.assert_allclose(
        perplexity(jnp.zeros((1, 3, 7)), jnp.zeros((1, 3), jnp.int32), jnp.ones((1, 3))), 7.0, rtol=1e-6
    )


def test_restricted_softmax_prob_hand_computed():
    # vocabulary of 6; allowed {1, 3, 4} with logits 0, ln 2, ln 5 -> probabilities 1/8, 2/8, 5/8;
    # the large logits at ids 0, 2, 5 are outside the restriction and must not matter
    logits = jnp.array([100.0, 0.0, 50.0, math.log(2.0), math.log(5.0), 80.0])
    allowed = [1, 3, 4]
    np.testing.assert_allclose(restricted_softmax_prob(logits, allowed, 3), 2 / 8, rtol=1e-6)
    np.testing.assert_allclose(restricted_softmax_prob(logits, allowed, 4), 5 / 8, rtol=1e-6)
    batch = jnp.stack([logits, logits])
    np.testing.assert_allclose(restricted_softmax_prob(batch, allowed, jnp.array([1, 4])), [1 / 8, 5 / 8], rtol=1e-6)
    jitted = jax.jit(restricted_softmax_prob)(batch, jnp.array(allowed), jnp.array([1, 4]))
    np.testing.assert_allclose(jitted, [1 / 8, 5 / 8], rtol=1e-6)


def test_restricted_softmax_prob_rejects_bad_ids():
    with pytest.raises(ValueError, match="not among allowed_ids"):
        restricted_softmax_prob(jnp.zeros(6), [1, 3, 4], 2)
    with pytest.raises(ValueError, match="duplicates"):
        restricted_softmax_prob(jnp.zeros(6), [1, 1, 4], 1)


def test_gap_closed():
    assert gap_closed(2.0, 0.5) == pytest.approx(0.75)
    assert gap_closed(2.0, 2.0) == 0.0
    assert gap_closed(1.0, 1.5) == pytest.approx(-0.5)
    assert gap_closed(jnp.float32(4.0), jnp.float32(0.0)) == 1.0
    with pytest.raises(ValueError, match="no gap to close"):
        gap_closed(0.0, 0.1)
