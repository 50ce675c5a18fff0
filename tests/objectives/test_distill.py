import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sycojax.objectives import (
    distill_on_output_logits,
    distill_on_topk,
    distill_topk_from_hidden,
    last_only_weights,
    teacher_topk,
    token_kl,
    topk_entropy,
)

LN3 = math.log(3.0)


def test_kl_hand_computed():
    # teacher [0, ln3] -> p = [1/4, 3/4]; student [0, 0] -> s = [1/2, 1/2]
    teacher = jnp.array([[[0.0, LN3]]])
    student = jnp.zeros((1, 1, 2))
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    np.testing.assert_allclose(distill_on_output_logits(student, teacher, jnp.ones((1, 1))), expected, rtol=1e-6)


def test_kl_temperature():
    # T = 2: teacher logits become [0, ln3 / 2] -> p = [1, sqrt 3] / (1 + sqrt 3); student stays uniform.
    teacher = jnp.array([[[0.0, LN3]]])
    student = jnp.zeros((1, 1, 2))
    r = math.sqrt(3.0)
    p = [1 / (1 + r), r / (1 + r)]
    expected = sum(pi * math.log(pi / 0.5) for pi in p)
    got = distill_on_output_logits(student, teacher, jnp.ones((1, 1)), temperature=2.0)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    # and the student is scaled too: student [0, ln3] at T=2 matches that teacher exactly
    np.testing.assert_allclose(
        distill_on_output_logits(teacher, teacher, jnp.ones((1, 1)), temperature=2.0), 0.0, atol=1e-7
    )


def test_kl_matches_numpy_and_is_zero_for_identical():
    rng = np.random.default_rng(1)
    t = rng.normal(size=(2, 4, 6)).astype(np.float32) * 2
    s = rng.normal(size=(2, 4, 6)).astype(np.float32) * 2
    w = np.array([[1, 1, 0, 1], [0, 1, 1, 1]], np.float32)
    p = np.exp(t) / np.exp(t).sum(-1, keepdims=True)
    q = np.exp(s) / np.exp(s).sum(-1, keepdims=True)
    kl = (p * np.log(p / q)).sum(-1)
    np.testing.assert_allclose(distill_on_output_logits(s, t, w), (kl * w).sum() / w.sum(), rtol=1e-5)
    np.testing.assert_allclose(distill_on_output_logits(t, t, w), 0.0, atol=1e-6)


def test_kl_last_only_and_masking():
    rng = np.random.default_rng(2)
    t = rng.normal(size=(2, 3, 5)).astype(np.float32)
    s = rng.normal(size=(2, 3, 5)).astype(np.float32)
    w = np.array([[1, 1, 0], [0, 1, 1]], np.float32)
    per = np.asarray(token_kl(t, s))
    # last weighted position: (row 0, t=1) and (row 1, t=2)
    np.testing.assert_allclose(
        distill_on_output_logits(s, t, w, last_only=True), (per[0, 1] + per[1, 2]) / 2, rtol=1e-6
    )
    # a NaN at a weight-0 position does not leak
    s_nan = s.copy()
    s_nan[0, 2] = np.nan
    np.testing.assert_allclose(distill_on_output_logits(s_nan, t, w), (per * w).sum() / w.sum(), rtol=1e-6)


def test_last_only_weights():
    w = jnp.array([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(last_only_weights(w), [[0, 2, 0], [0, 0, 1], [0, 0, 0]])


def test_teacher_gets_no_gradient():
    t = jnp.array([[[0.0, 1.0, 2.0]]])
    s = jnp.array([[[1.0, 0.0, 0.0]]])
    gt = jax.grad(lambda t: distill_on_output_logits(s, t, jnp.ones((1, 1))))(t)
    gs = jax.grad(lambda s: distill_on_output_logits(s, t, jnp.ones((1, 1))))(s)
    np.testing.assert_array_equal(gt, 0.0)
    # d KL / d z_s = s - p (T = 1)
    p = np.exp([0.0, 1.0, 2.0]) / np.exp([0.0, 1.0, 2.0]).sum()
    q = np.exp([1.0, 0.0, 0.0]) / np.exp([1.0, 0.0, 0.0]).sum()
    np.testing.assert_allclose(gs[0, 0], q - p, rtol=1e-5, atol=1e-7)


def test_kl_stable_for_huge_logits():
    t = jnp.array([[[1e4, 0.0]]])
    s = jnp.array([[[0.0, 1e4]]])
    got = distill_on_output_logits(s, t, jnp.ones((1, 1)))
    np.testing.assert_allclose(got, 1e4, rtol=1e-6)  # p = [1, 0]: KL = -log s_0 = 1e4


# ------------------------------------------------------------------ top-k


def test_teacher_topk_hand_computed():
    teacher = jnp.log(jnp.array([[[1.0, 2.0, 5.0]]]))  # p = [1/8, 2/8, 5/8]
    idx, lp = teacher_topk(teacher, 2)
    np.testing.assert_array_equal(idx, [[[2, 1]]])
    np.testing.assert_allclose(lp, np.log([[[5 / 8, 2 / 8]]]), rtol=1e-6)
    _, lp2 = teacher_topk(teacher, 2, temperature=2.0)  # p ∝ sqrt([1, 2, 5])
    z = np.sqrt([1.0, 2.0, 5.0])
    np.testing.assert_allclose(lp2, np.log([[[z[2] / z.sum(), z[1] / z.sum()]]]), rtol=1e-6)
    with pytest.raises(ValueError, match="k="):
        teacher_topk(teacher, 4)


def test_distill_on_topk_hand_computed():
    teacher = jnp.log(jnp.array([[[1.0, 2.0, 5.0]]]))
    student = jnp.log(jnp.array([[[1.0, 1.0, 2.0]]]))  # s = [1/4, 1/4, 1/2]
    idx, lp = teacher_topk(teacher, 2)  # q over {2, 1} = [5/7, 2/7]
    expected = -(5 / 7 * math.log(1 / 2) + 2 / 7 * math.log(1 / 4))
    np.testing.assert_allclose(distill_on_topk(student, idx, lp, jnp.ones((1, 1))), expected, rtol=1e-6)
    np.testing.assert_allclose(topk_entropy(lp), -(5 / 7 * math.log(5 / 7) + 2 / 7 * math.log(2 / 7)), rtol=1e-6)


def test_distill_on_topk_with_tail_hand_computed():
    """tail=True: p over {2, 1} = [5/8, 2/8] plus p_rest = 1/8; s = [1/2, 1/4] plus s_rest = 1/4."""
    teacher = jnp.log(jnp.array([[[1.0, 2.0, 5.0]]]))
    student = jnp.log(jnp.array([[[1.0, 1.0, 2.0]]]))
    idx, lp = teacher_topk(teacher, 2)
    expected = -(5 / 8 * math.log(1 / 2) + 2 / 8 * math.log(1 / 4) + 1 / 8 * math.log(1 / 4))
    np.testing.assert_allclose(distill_on_topk(student, idx, lp, jnp.ones((1, 1)), tail=True), expected, rtol=1e-6)
    # a student that copies the teacher everywhere is the minimum; one that moves the tail's mass into the
    # top k is NOT (the renormalised loss prefers it: that is why its full-vocabulary KL plateaus)
    greedy = jnp.log(jnp.array([[[1e-9, 2.0, 6.0]]]))
    for t in (teacher, greedy):
        assert distill_on_topk(teacher, idx, lp, jnp.ones((1, 1)), tail=True) <= distill_on_topk(
            t, idx, lp, jnp.ones((1, 1)), tail=True) + 1e-7
    assert distill_on_topk(greedy, idx, lp, jnp.ones((1, 1))) < distill_on_topk(teacher, idx, lp, jnp.ones((1, 1)))
    assert distill_on_topk(greedy, idx, lp, jnp.ones((1, 1)), tail=True) > distill_on_topk(
        teacher, idx, lp, jnp.ones((1, 1)), tail=True)


def test_tail_loss_with_every_token_kept_is_the_full_cross_entropy():
    rng = np.random.default_rng(5)
    t = (rng.normal(size=(2, 4, 7)) * 2).astype(np.float32)
    s = (rng.normal(size=(2, 4, 7)) * 2).astype(np.float32)
    w = np.ones((2, 4), np.float32)
    idx, lp = teacher_topk(jnp.asarray(t), 7)
    p = jax.nn.softmax(t, -1)
    full = -np.mean(np.sum(p * jax.nn.log_softmax(s, -1), -1))
    np.testing.assert_allclose(distill_on_topk(s, idx, lp, w, tail=True), full, rtol=1e-5)
    # and from hidden states, chunked, equal to the logits version (values and gradients)
    h = jnp.asarray(rng.normal(size=(2, 4, 3)).astype(np.float32))
    wt = jnp.asarray(rng.normal(size=(7, 3)).astype(np.float32))
    idx3, lp3 = teacher_topk(jnp.asarray(t), 3)
    a = jax.value_and_grad(lambda h: distill_on_topk(jnp.einsum("btd,vd->btv", h, wt), idx3, lp3, w, tail=True))(h)
    b = jax.value_and_grad(lambda h: distill_topk_from_hidden(h, wt, idx3, lp3, w, chunk=3, tail=True))(h)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_topk_full_vocab_is_kl_plus_teacher_entropy(temperature):
    rng = np.random.default_rng(3)
    t = (rng.normal(size=(2, 5, 9)) * 2).astype(np.float32)
    s = (rng.normal(size=(2, 5, 9)) * 2).astype(np.float32)
    w = np.array([[1, 0, 1, 1, 0], [1, 1, 1, 0, 1]], np.float32)

    @jax.jit
    def quantities(s, t):
        idx, lp = teacher_topk(t, 9, temperature)
        ce, g_ce = jax.value_and_grad(lambda s: distill_on_topk(s, idx, lp, w, temperature))(s)
        kl, g_kl = jax.value_and_grad(lambda s: distill_on_output_logits(s, t, w, temperature))(s)
        return ce, g_ce, kl, g_kl, topk_entropy(lp)

    ce, g_ce, kl, g_kl, h_topk = quantities(s, t)
    p = np.exp(np.asarray(t) / temperature)
    p /= p.sum(-1, keepdims=True)
    h = -(p * np.log(p)).sum(-1)
    np.testing.assert_allclose(ce, kl + (h * w).sum() / w.sum(), rtol=1e-5)
    np.testing.assert_allclose(h_topk, h, rtol=1e-5)
    # same gradient as the KL (they differ by a student-independent constant)
    np.testing.assert_allclose(g_ce, g_kl, atol=1e-6)


def test_topk_last_only_and_masking():
    rng = np.random.default_rng(4)
    t = rng.normal(size=(1, 3, 6)).astype(np.float32)
    s = rng.normal(size=(1, 3, 6)).astype(np.float32)
    idx, lp = teacher_topk(t, 3)
    w = np.array([[1.0, 1.0, 0.0]], np.float32)
    only_1 = distill_on_topk(s, idx, lp, np.array([[0.0, 1.0, 0.0]], np.float32))
    np.testing.assert_allclose(distill_on_topk(s, idx, lp, w, last_only=True), only_1, rtol=1e-6)
    s_nan = s.copy()
    s_nan[0, 2] = np.nan
    np.testing.assert_allclose(distill_on_topk(s_nan, idx, lp, w), distill_on_topk(s, idx, lp, w), rtol=1e-6)


# ------------------------------------------------------------------ chunked from hidden states


def _chunk_case(t_len=10, b=2, d=8, v=16, k=4, seed=5):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(b, t_len, d)).astype(np.float32)
    head = (rng.normal(size=(v, d)) / np.sqrt(d)).astype(np.float32)
    teacher = (rng.normal(size=(b, t_len, v)) * 2).astype(np.float32)
    idx, lp = teacher_topk(teacher, k, 1.5)
    w = rng.integers(0, 2, size=(b, t_len)).astype(np.float32)
    w[:, 0] = 1.0
    return hidden, head, idx, lp, w


@pytest.fixture(scope="module")
def chunk_case():
    hidden, head, idx, lp, w = _chunk_case()

    def full(h, wt):
        return distill_on_topk(jnp.einsum("btd,vd->btv", h, wt), idx, lp, w, 1.5)

    value, grads = jax.value_and_grad(full, argnums=(0, 1))(hidden, head)
    return (hidden, head, idx, lp, w), value, grads


@pytest.mark.parametrize("chunk", [3, 128])  # T = 10: 4 chunks with 2 padded positions; one chunk
def test_chunked_equals_unchunked_value_and_gradient(chunk_case, chunk):
    (hidden, head, idx, lp, w), v_full, g_full = chunk_case

    def chunked(h, wt):
        return distill_topk_from_hidden(h, wt, idx, lp, w, 1.5, chunk=chunk)

    v_chunk, g_chunk = jax.value_and_grad(chunked, argnums=(0, 1))(hidden, head)
    np.testing.assert_allclose(v_chunk, v_full, rtol=1e-5)
    for a, b in zip(g_chunk, g_full, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _max_intermediate_size(closed_jaxpr):
    """Largest array any equation (at any nesting depth) produces."""
    biggest = 0

    def walk(jaxpr):
        nonlocal biggest
        for eqn in jaxpr.eqns:
            for var in eqn.outvars:
                shape = getattr(var.aval, "shape", ())
                biggest = max(biggest, int(np.prod(shape)) if shape else 1)
            for p in eqn.params.values():
                for cand in p if isinstance(p, (list, tuple)) else [p]:
                    if hasattr(cand, "jaxpr") and hasattr(cand.jaxpr, "eqns"):
                        walk(cand.jaxpr)
                    elif hasattr(cand, "eqns"):
                        walk(cand)

    walk(closed_jaxpr.jaxpr)
    return biggest


def test_chunked_never_materialises_full_logits():
    b, t_len, v = 2, 12, 64
    hidden, head, idx, lp, w = _chunk_case(t_len=t_len, b=b, d=8, v=v, k=4)
    f = jax.value_and_grad(lambda h, wt: distill_topk_from_hidden(h, wt, idx, lp, w, 1.0, chunk=4), argnums=(0, 1))
    biggest = _max_intermediate_size(jax.make_jaxpr(f)(hidden, head))
    assert biggest < b * t_len * v, f"an intermediate of {biggest} elements: full logits are {b * t_len * v}"
    # the unchunked loss does materialise them (the check above can fail)
    g = jax.value_and_grad(lambda h, wt: distill_on_topk(jnp.einsum("btd,vd->btv", h, wt), idx, lp, w), argnums=(0, 1))
    assert _max_intermediate_size(jax.make_jaxpr(g)(hidden, head)) >= b * t_len * v


def test_kl_with_impossible_teacher_tokens_is_finite():
    # a teacher logit of -inf (a banned token) has p = 0 and contributes nothing
    teacher = jnp.array([[[0.0, LN3, -jnp.inf]]])
    student = jnp.zeros((1, 1, 3))
    loss, grad = jax.value_and_grad(lambda s: distill_on_output_logits(s, teacher, jnp.ones((1, 1))))(student)
    expected = 0.25 * math.log(0.25 * 3) + 0.75 * math.log(0.75 * 3)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    np.testing.assert_allclose(grad[0, 0], np.array([1 / 3, 1 / 3, 1 / 3]) - [0.25, 0.75, 0.0], atol=1e-6)


def _log_softmax_kl(t, s):  # the textbook form, differentiated by autodiff
    log_p, log_s = jax.nn.log_softmax(t, axis=-1), jax.nn.log_softmax(s, axis=-1)
    p = jnp.exp(log_p)
    return jnp.sum(jnp.where(p > 0, p * (log_p - log_s), 0.0), axis=-1)


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_kl_gradients_match_autodiff_of_log_softmax_form(temperature):
    # token_kl's hand-written backward, for the student AND the teacher, with a banned teacher token
    rng = np.random.default_rng(5)
    t = jnp.asarray(3.0 * rng.normal(size=(2, 3, 11)), jnp.float32).at[0, 1, 4].set(-jnp.inf)
    s = jnp.asarray(3.0 * rng.normal(size=(2, 3, 11)), jnp.float32)
    cot = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)  # a non-uniform upstream gradient

    def ours(t, s):
        return jnp.sum(cot * token_kl(t, s, temperature))

    def ref(t, s):  # autodiff of the textbook form gives NaN across a row with −inf: use a finite stand-in
        t = jnp.where(jnp.isneginf(t), -1e30, t)
        return jnp.sum(cot * _log_softmax_kl(t / temperature, s / temperature))

    (v, (gt, gs)), (v_ref, (gt_ref, gs_ref)) = (jax.value_and_grad(f, argnums=(0, 1))(t, s) for f in (ours, ref))
    np.testing.assert_allclose(v, v_ref, rtol=1e-5)
    np.testing.assert_allclose(gs, gs_ref, atol=1e-6)
    np.testing.assert_allclose(gt, gt_ref, atol=1e-6)
    assert gt[0, 1, 4] == 0.0 and np.isfinite(np.asarray(gt)).all()
