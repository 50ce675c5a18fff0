import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sycojax.adapters import LoraConfig, init_lora, init_memory, insert_after_bos, merge_lora, resolve_targets
from sycojax.masks import causal_padding, positions_from_valid
from sycojax.models import Adapters, forward


def _run(params, cfg, ids, adapters=None, **kw):
    valid = jnp.ones(ids.shape, bool)
    return forward(params, ids, cfg=cfg, positions=positions_from_valid(valid), mask=causal_padding(valid),
                   adapters=adapters, **kw).logits


def _randomise_b(lora, key):
    leaves, tdef = jax.tree.flatten_with_path(lora)
    out = [0.05 * jax.random.normal(jax.random.fold_in(key, i), x.shape) if p[-1].key == "lora_B" else x
           for i, (p, x) in enumerate(leaves)]
    return jax.tree.unflatten(tdef, out)


def test_fresh_lora_is_identity_and_merged_equals_unmerged(tiny_llama):
    cfg, params = tiny_llama
    lc = LoraConfig(rank=4, alpha=8, targets=("all",))
    lora = init_lora(params, cfg, lc, jax.random.key(1))
    ids = jnp.asarray(np.random.RandomState(0).randint(3, cfg.vocab_size, (2, 12)))
    base = _run(params, cfg, ids)
    np.testing.assert_allclose(_run(params, cfg, ids, Adapters(lora=lora, lora_scale=lc.scale)), base, atol=1e-6)
    lora = _randomise_b(lora, jax.random.key(2))
    unmerged = _run(params, cfg, ids, Adapters(lora=lora, lora_scale=lc.scale))
    assert np.abs(unmerged - base).max() > 1e-3  # the patch does something
    merged = _run(merge_lora(params, lora, cfg, lc.scale), cfg, ids)
    np.testing.assert_allclose(merged, unmerged, atol=1e-4)


def test_gate_restricts_lora_to_chosen_positions(tiny_llama):
    cfg, params = tiny_llama
    lc = LoraConfig(rank=2, targets=("q", "v"))
    lora = _randomise_b(init_lora(params, cfg, lc, jax.random.key(0)), jax.random.key(3))
    ids = jnp.asarray([[5, 6, 7, 8, 9, 10]])
    gate = jnp.asarray([[1, 1, 1, 0, 0, 0]], jnp.float32)
    gated = _run(params, cfg, ids, Adapters(lora=lora, gate=gate, lora_scale=lc.scale))
    full = _run(params, cfg, ids, Adapters(lora=lora, lora_scale=lc.scale))
    np.testing.assert_allclose(gated[:, :3], full[:, :3], atol=1e-6)  # causal: the prefix is gated on everywhere
    assert np.abs(gated[:, 3:] - full[:, 3:]).max() > 1e-4


def test_resolve_targets_aliases_and_errors(tiny_llama):
    cfg, _ = tiny_llama
    assert resolve_targets(cfg, "q,v,down") == ("q_proj", "v_proj", "down_proj")
    with pytest.raises(ValueError, match="unknown LoRA target 'qq'"):
        resolve_targets(cfg, ("qq",))


def test_memory_tokens_change_only_their_own_embeddings(tiny_llama):
    cfg, params = tiny_llama
    n = 3
    mem = init_memory(params, cfg, n, "mean")
    ids = jnp.asarray([insert_after_bos([1, 7, 8, 9], cfg, n)])
    assert ids[0, 1:4].tolist() == [cfg.vocab_size + i for i in range(n)]

    def loss(mem):
        return _run(params, cfg, ids, Adapters(embeddings=mem))[0, -1, 4]

    g = jax.grad(loss)(mem)
    assert g.shape == (n, cfg.hidden_size) and float(jnp.abs(g).max()) > 0
    # gradient wrt the base flows only through real-token rows; memory rows stay a separate tree
    gbase = jax.grad(lambda p: _run(p, cfg, ids, Adapters(embeddings=mem))[0, -1, 4])(params)
    rows = np.nonzero(np.abs(np.asarray(gbase["model"]["embed_tokens"]["weight"])).sum(1))[0]
    assert set(rows.tolist()) >= {1, 7, 8, 9}
    ctx = init_memory(params, cfg, 2, "context", context_ids=[10, 11, 12, 13])
    table = params["model"]["embed_tokens"]["weight"]
    np.testing.assert_allclose(ctx[0], table[jnp.asarray([10, 11])].mean(0), atol=1e-6)


def test_lora_hand_written_backward_equals_autodiff():
    """`layers.lora_delta` has a custom VJP (a CPU speed-up): its gradients must equal plain autodiff's."""
    from sycojax.models.layers import lora_delta

    ks = jax.random.split(jax.random.key(3), 4)
    x, a_w, b_w = (jax.random.normal(ks[0], (10, 6)), jax.random.normal(ks[1], (3, 6)),
                   jax.random.normal(ks[2], (5, 3)))
    g = jax.random.normal(ks[3], (10, 5))

    def plain(x, a_w, b_w):
        return jnp.sum(g * ((x @ a_w.T) @ b_w.T * 0.7))

    def custom(x, a_w, b_w):
        return jnp.sum(g * lora_delta(x, a_w, b_w, 0.7))

    np.testing.assert_allclose(custom(x, a_w, b_w), plain(x, a_w, b_w), rtol=1e-6)
    for got, want in zip(jax.grad(custom, (0, 1, 2))(x, a_w, b_w), jax.grad(plain, (0, 1, 2))(x, a_w, b_w)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_lora_gradients_through_the_model_with_a_gate(tiny_llama):
    """End to end: d loss / d LoRA through `forward` (custom VJP inside, per-position gate) equals finite
    differences along a random direction."""
    cfg, params = tiny_llama
    lc = LoraConfig(rank=2, alpha=4, targets=("all",))
    lora = _randomise_b(init_lora(params, cfg, lc, jax.random.key(1)), jax.random.key(2))
    ids = jnp.asarray(np.random.RandomState(1).randint(3, cfg.vocab_size, (2, 7)))
    gate = jnp.asarray(np.random.RandomState(2).rand(2, 7) > 0.5)

    def loss(lo):
        out = _run(params, cfg, ids, Adapters(lora=lo, gate=gate, lora_scale=lc.scale))
        return jnp.mean(jax.nn.logsumexp(out, -1) - out[..., 5])

    grads = jax.grad(loss)(lora)
    direction = jax.tree.map(lambda x, k=jax.random.key(4): jax.random.normal(k, x.shape), lora)
    eps = 1e-2
    plus = loss(jax.tree.map(lambda p, d: p + eps * d, lora, direction))
    minus = loss(jax.tree.map(lambda p, d: p - eps * d, lora, direction))
    analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
    np.testing.assert_allclose((plus - minus) / (2 * eps), analytic, rtol=2e-2)


@pytest.mark.parametrize("remat", [True, "full", "dots"])
def test_remat_policies_give_the_same_gradients(tiny_llama, remat):
    """Rematerialising blocks (`forward(remat=...)`) changes what is stored, never the loss or its gradient."""
    cfg, params = tiny_llama
    lc = LoraConfig(rank=2, alpha=4, targets=("all",))
    lora = _randomise_b(init_lora(params, cfg, lc, jax.random.key(1)), jax.random.key(2))
    ids = jnp.asarray(np.random.RandomState(1).randint(3, cfg.vocab_size, (2, 7)))

    def loss(lo, remat):
        out = _run(params, cfg, ids, Adapters(lora=lo, lora_scale=lc.scale), remat=remat)
        return jnp.mean(jax.nn.logsumexp(out, -1) - out[..., 5])

    ref_loss, ref = jax.value_and_grad(loss)(lora, False)
    got_loss, got = jax.jit(jax.value_and_grad(loss), static_argnums=1)(lora, remat)
    np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-6)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(ref)):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6)


def test_unknown_remat_policy_is_a_clear_error(tiny_llama):
    cfg, params = tiny_llama
    with pytest.raises(ValueError, match="unknown remat 'dot'.*'dots'"):
        _run(params, cfg, jnp.zeros((1, 3), jnp.int32), remat="dot")
