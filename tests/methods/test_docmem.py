"""The document memory module and the guidance loss against hand-written references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sycojax.methods.docmem import (
    DocMemConfig,
    docmem_apply,
    document_keys,
    init_docmem,
    negative_keys,
    selection,
)
from sycojax.objectives import guidance_loss


def _gelu(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))


@pytest.mark.parametrize("key_activation", ["tanh", "relu"])
def test_module_matches_the_formula_per_row(key_activation):
    c = DocMemConfig(d_model=6, memory_units=4, key_dim=2, key_activation=key_activation)
    p = init_docmem(jax.random.key(0), c)
    p = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(1), x.shape), p)  # nonzero biases
    h = jax.random.normal(jax.random.key(2), (2, 3, 6))
    k = jnp.array([[1.0, -0.5], [-0.3, 0.8]])
    out = np.asarray(docmem_apply(p, h, k, c))
    q = jax.tree.map(np.asarray, p)
    sigma = np.tanh if key_activation == "tanh" else (lambda x: np.maximum(x, 0))
    for b in range(2):
        x = _gelu(np.asarray(h[b]) @ q["up"]["w"].T + q["up"]["b"])
        x = x * sigma(q["gate"]["w"] @ np.asarray(k[b]) + q["gate"]["b"])
        x = (x @ q["down"]["w"].T + q["down"]["b"]) @ q["lmm"]["w"].T + q["lmm"]["b"]
        np.testing.assert_allclose(out[b], np.asarray(h[b]) + _gelu(x), rtol=1e-5, atol=1e-5)
    ungated = np.asarray(docmem_apply(p, h, None, c))  # no key: the gate is skipped, not zeroed
    assert not np.allclose(ungated, out) and not np.allclose(ungated, np.asarray(h))


def test_init_is_orthogonal_with_gain_sqrt2_and_keys_are_fixed_rows():
    c = DocMemConfig(d_model=8, memory_units=4, key_dim=2)
    p = init_docmem(jax.random.key(0), c)
    up = np.asarray(p["up"]["w"])  # (4, 8): orthonormal rows, scaled by √2
    np.testing.assert_allclose(up @ up.T, 2 * np.eye(4), atol=1e-5)
    assert all(float(jnp.abs(v["b"]).max()) == 0 for v in p.values())
    keys = np.asarray(document_keys(jax.random.key(3), 2, 2))
    np.testing.assert_allclose(keys @ keys.T, 2 * np.eye(2), atol=1e-5)
    np.testing.assert_array_equal(keys, np.asarray(document_keys(jax.random.key(3), 2, 2)))
    gates = np.asarray(selection(p, jnp.asarray(keys), c))
    assert gates.shape == (2, 4) and not np.allclose(gates[0], gates[1])


def test_negative_keys():
    keys = document_keys(jax.random.key(0), 5, 2)
    ids = jnp.array([0, 1, 2, 3, 4] * 20)
    other = negative_keys(jax.random.key(1), keys, ids, "other")
    own = keys[ids]
    assert not np.any(np.all(np.isclose(np.asarray(other), np.asarray(own)), axis=1))  # never its own key
    assert {tuple(np.round(r, 5)) for r in np.asarray(other)} == {tuple(np.round(r, 5)) for r in np.asarray(keys)}
    assert float(jnp.abs(negative_keys(jax.random.key(1), keys, ids, "zero")).max()) == 0
    rnd = negative_keys(jax.random.key(1), keys, ids, "random")
    assert rnd.shape == (100, 2) and 0.7 < float(jnp.std(rnd)) < 1.3
    with pytest.raises(ValueError, match="at least 2 documents"):
        negative_keys(jax.random.key(1), keys[:1], ids[:1] * 0, "other")
    with pytest.raises(ValueError, match="unknown negative key 'shuffled'"):
        negative_keys(jax.random.key(1), keys, ids, "shuffled")


def test_guidance_loss_both_forms_values_and_gradients():
    tau, alpha = 4.5, 0.1
    # paper: ce_pos + alpha |tau - ce_neg|
    assert float(guidance_loss(2.0, 3.0, form="paper")) == pytest.approx(2.0 + alpha * 1.5)
    assert float(guidance_loss(2.0, 6.0, form="paper")) == pytest.approx(2.0 + alpha * 1.5)
    # code: ce_pos + alpha min((ce_neg - tau)^2, ce_pos)
    assert float(guidance_loss(2.0, 4.0, form="code")) == pytest.approx(2.0 + alpha * 0.25)
    assert float(guidance_loss(2.0, 8.0, form="code")) == pytest.approx(2.0 + alpha * 2.0)  # capped by ce_pos
    g_neg = jax.grad(lambda n: guidance_loss(2.0, n, form="code"))(4.0)
    assert float(g_neg) == pytest.approx(alpha * 2 * (4.0 - tau))
    g_pos, g_neg = jax.grad(lambda p, n: guidance_loss(p, n, form="code"), argnums=(0, 1))(2.0, 8.0)
    assert float(g_pos) == pytest.approx(1 + alpha) and float(g_neg) == 0.0  # the cap: gradient to ce_pos
    assert float(guidance_loss(1.0, 1.0, tau=1.0, alpha=0.5, form="paper")) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown guidance form"):
        guidance_loss(1.0, 1.0, form="mse")


def test_config_errors_name_the_choice():
    with pytest.raises(ValueError, match="choose tanh or relu"):
        DocMemConfig(d_model=4, key_activation="sigmoid")


def test_the_module_as_a_block_hook_on_the_model(tiny_llama):
    """On the seam: a hook on the last block gives the LM head `docmem_apply(h_last)`; keys change the logits."""
    from sycojax.masks import causal_padding, positions_from_valid  # noqa: PLC0415
    from sycojax.methods.docmem import DocMemHook  # noqa: PLC0415
    from sycojax.models import BlockModules, Module, forward  # noqa: PLC0415

    cfg, params = tiny_llama
    c = DocMemConfig(d_model=cfg.hidden_size, memory_units=8, key_dim=2)
    p = init_docmem(jax.random.key(0), c)
    tokens = jnp.asarray([[1, 5, 6, 7, 8], [1, 9, 10, 11, 12]])
    valid = jnp.ones_like(tokens, bool)
    kw = dict(cfg=cfg, positions=positions_from_valid(valid), mask=causal_padding(valid))
    keys = document_keys(jax.random.key(1), 2, 2)
    last = cfg.num_layers - 1
    mods = BlockModules(hooks={last: Module(DocMemHook(c), p)})
    out = forward(params, tokens, modules=mods, module_ctx={"doc_key": keys}, return_hidden=True, **kw)
    plain = forward(params, tokens, return_hidden=True, **kw)
    np.testing.assert_allclose(np.asarray(out.hidden_states[:-1]), np.asarray(plain.hidden_states[:-1]), atol=1e-6)
    swapped = forward(params, tokens, modules=mods, module_ctx={"doc_key": keys[::-1]}, **kw)
    assert not np.allclose(np.asarray(out.logits), np.asarray(plain.logits), atol=1e-4)
    assert not np.allclose(np.asarray(out.logits), np.asarray(swapped.logits), atol=1e-4)
    g = jax.grad(lambda q: forward(params, tokens, modules=BlockModules(hooks={last: Module(DocMemHook(c), q)}),
                                   module_ctx={"doc_key": keys}, **kw).logits.sum())(p)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(g))
    assert float(jnp.abs(g["gate"]["w"]).max()) > 0


def test_cached_training_step_and_greedy_decoding_with_the_module(tiny_llama):
    """The loss on cached activations equals the full forward's; greedy decoding with the hook (KV cache) equals
    the argmax of full recomputation; the guidance gradient reaches the module."""
    from sycojax.masks import causal_padding, positions_from_valid  # noqa: PLC0415
    from sycojax.methods.docmem import DocMemHook  # noqa: PLC0415
    from sycojax.methods.docmem import eval as E  # noqa: PLC0415
    from sycojax.methods.docmem import loss as Lo  # noqa: PLC0415
    from sycojax.models import BlockModules, Module, forward  # noqa: PLC0415

    cfg, params = tiny_llama
    c = DocMemConfig(d_model=cfg.hidden_size, memory_units=8, key_dim=2)
    p = init_docmem(jax.random.key(0), c)
    layer = cfg.num_layers - 1
    tokens = jnp.asarray([[1, 5, 6, 7, 8, 9], [1, 9, 10, 11, 0, 0]])
    valid = tokens > 0
    keys = document_keys(jax.random.key(1), 2, 2)
    h = Lo.cache_hidden(params, tokens, valid, cfg=cfg, layer=layer)
    nll = Lo.window_nll(params, p, c, cfg, layer, h, tokens, valid, valid.astype(jnp.float32), keys)
    full = forward(params, tokens, cfg=cfg, positions=positions_from_valid(valid), mask=causal_padding(valid),
                   modules=BlockModules(hooks={layer: Module(DocMemHook(c), p)}), module_ctx={"doc_key": keys}).logits
    logp = jax.nn.log_softmax(full[:, :-1], -1)
    ref = -jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
    w = valid[:, 1:].astype(jnp.float32)
    np.testing.assert_allclose(np.asarray(nll), np.asarray((ref * w).sum(1) / w.sum(1)), rtol=1e-5)

    loss_fn = Lo.make_loss_fn(cfg, c, layer, negative="other", tau=4.5, alpha=0.1, form="code")
    batch = {"h": h, "tokens": tokens, "valid": valid, "weights": valid.astype(jnp.float32), "doc": jnp.array([0, 1])}
    (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(p, {"base": params, "keys": keys}, batch,
                                                               jax.random.key(2))
    assert np.isfinite(float(loss)) and float(aux["ce_pos"]) > 0 and float(jnp.abs(g["gate"]["w"]).max()) > 0

    prompts = [[1, 5, 6], [1, 9]]
    got = E.greedy(params, cfg, prompts, 3, module_params=p, c=c, layer=layer, keys=np.asarray(keys))
    for r, pr in enumerate(prompts):
        seq = list(pr)
        for _ in range(3):
            t = jnp.asarray([seq])
            lg = forward(params, t, cfg=cfg, positions=positions_from_valid(t > -1), mask=causal_padding(t > -1),
                         modules=BlockModules(hooks={layer: Module(DocMemHook(c), p)}),
                         module_ctx={"doc_key": keys[r : r + 1]}).logits
            seq.append(int(jnp.argmax(lg[0, -1])))
        assert got[r].tolist() == seq[len(pr) :]
