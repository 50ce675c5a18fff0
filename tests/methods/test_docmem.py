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
    np.testing.assert_array_equal(np.asarray(docmem_apply(p, h, None, c)), np.asarray(h))  # no key: inactive


@pytest.mark.parametrize("key_activation", ["tanh", "relu"])
def test_topk_gate_is_the_dense_formula_on_its_units_and_a_zero_key_is_the_base(key_activation):
    """The topk gate keeps each key's top_k |σ(W_gate k)| units and gathers only them; the result equals the
    dense formula with the other units' gate set to 0 (no bias after the gate); a zero key returns `h` exactly."""
    c = DocMemConfig(d_model=6, memory_units=10, key_dim=3, key_activation=key_activation, gate="topk", top_k=4)
    p = init_docmem(jax.random.key(0), c)
    assert set(p["up"]) == {"w", "b"} and all(set(p[n]) == {"w"} for n in ("gate", "down", "lmm"))
    p["up"]["b"] = 0.1 * jax.random.normal(jax.random.key(1), p["up"]["b"].shape)
    h = jax.random.normal(jax.random.key(2), (3, 5, 6))
    k = jnp.array([[1.0, -0.5, 0.2], [-0.3, 0.8, 0.0], [0.0, 0.0, 0.0]])
    out = np.asarray(docmem_apply(p, h, k, c))
    q = jax.tree.map(np.asarray, p)
    sigma = np.tanh if key_activation == "tanh" else (lambda x: np.maximum(x, 0))
    for b in range(3):
        g = sigma(q["gate"]["w"] @ np.asarray(k[b]))
        g = np.where(np.abs(g) >= np.sort(np.abs(g))[-4], g, 0.0)  # the top 4
        gates = np.asarray(selection(p, k[b : b + 1], c))[0]
        np.testing.assert_allclose(gates, g, atol=1e-6)
        assert (np.abs(gates) > 0).sum() <= 4
        x = _gelu(np.asarray(h[b]) @ q["up"]["w"].T + q["up"]["b"]) * g
        x = (x @ q["down"]["w"].T) @ q["lmm"]["w"].T
        np.testing.assert_allclose(out[b], np.asarray(h[b]) + _gelu(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[2], np.asarray(h[2]))
    with pytest.raises(ValueError, match="top_k=0 with memory_units=10"):
        DocMemConfig(d_model=6, memory_units=10, gate="topk")


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
    h = Lo.cache_after(params, np.asarray(tokens), np.asarray(valid), cfg=cfg, layer=layer)
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


TINY_NEOX = dict(arch="gpt_neox", vocab_size=61, hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4,
                 num_kv_heads=4, head_dim=8, max_position_embeddings=64, rotary_dim=4, use_parallel_residual=True)


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_chunked_rows_and_sampled_negatives_equal_the_window_forward(tiny_llama, arch):
    """LLaMA and GPT-NeoX. On the last block the training rows are re-cut into chunks of one document's
    positions: their token-mean NLL equals the full forward's with the hook; sampled positions give those
    positions' logits; a hook below the last block runs the blocks above (equal to the hooked forward) and
    refuses chunking."""
    from sycojax.masks import causal_padding, positions_from_valid  # noqa: PLC0415
    from sycojax.methods.docmem import DocMemHook  # noqa: PLC0415
    from sycojax.methods.docmem import loss as Lo  # noqa: PLC0415
    from sycojax.models import BlockModules, ModelConfig, Module, forward, init_params  # noqa: PLC0415

    cfg, params = tiny_llama
    if arch == "gpt_neox":
        cfg = ModelConfig(**TINY_NEOX)
        params = init_params(cfg, jax.random.key(0), std=0.1)
    c = DocMemConfig(d_model=cfg.hidden_size, memory_units=16, key_dim=2, gate="topk", top_k=4)
    p = init_docmem(jax.random.key(0), c)
    p["lmm"]["w"] = p["lmm"]["w"] * 3.0  # a visible increment
    tokens = np.asarray([[1, 5, 6, 7, 8, 9, 10], [1, 9, 10, 11, 0, 0, 0]])
    valid = tokens > 0
    weights = valid.astype(np.float32)
    keys = document_keys(jax.random.key(1), 2, 2)
    doc = np.array([0, 1])
    for layer in (0, cfg.num_layers - 1):  # the last one last: its h and logits are used below
        mods = BlockModules(hooks={layer: Module(DocMemHook(c), p)})
        full = forward(params, jnp.asarray(tokens), cfg=cfg, positions=positions_from_valid(jnp.asarray(valid)),
                       mask=causal_padding(jnp.asarray(valid)), modules=mods, module_ctx={"doc_key": keys[doc]}).logits
        h = Lo.cache_after(params, tokens, valid, cfg=cfg, layer=layer)
        got = Lo.tail_logits(params, p, c, cfg, layer, jnp.asarray(h), jnp.asarray(valid), keys[doc])
        np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(full)[valid], atol=2e-5)
    layer = cfg.num_layers - 1
    at = jnp.asarray([[0, 3], [2, 1]])
    picked = Lo.tail_logits(params, p, c, cfg, layer, jnp.asarray(h), None, keys[doc], at=at)
    np.testing.assert_allclose(np.asarray(picked), np.take_along_axis(np.asarray(full), np.asarray(at)[..., None], 1),
                               atol=2e-5)
    rows = Lo.chunk_positions(h, tokens, weights, doc, chunk=4)
    assert rows["h"].shape == (3, 4, cfg.hidden_size) and rows["doc"].tolist() == [0, 0, 1]
    assert rows["weights"].sum() == weights[:, 1:].sum()  # every target once, padding never
    logp = jax.nn.log_softmax(full[:, :-1], -1)
    ref = -np.take_along_axis(np.asarray(logp), tokens[:, 1:, None], -1)[..., 0]
    want = (ref * weights[:, 1:]).sum() / weights[:, 1:].sum()
    got = Lo.chunk_nll(params, p, c, cfg, jnp.asarray(rows["h"]), jnp.asarray(rows["labels"]),
                       jnp.asarray(rows["weights"]), keys[rows["doc"]])
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    loss_fn = Lo.make_loss_fn(cfg, c, layer, negative="other", tau=4.5, alpha=0.1, form="paper", neg_positions=2,
                              chunked=True)
    (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(p, {"base": params, "keys": keys},
                                                               jax.tree.map(jnp.asarray, rows), jax.random.key(2))
    np.testing.assert_allclose(float(aux["ce_pos"]), want, rtol=1e-5)
    assert float(loss) == pytest.approx(float(aux["ce_pos"]) + 0.1 * abs(4.5 - float(aux["ce_neg"])), rel=1e-5)
    assert float(jnp.abs(g["up"]["w"]).max()) > 0 and "b" not in g["lmm"]
    with pytest.raises(ValueError, match="need the hook on the last block"):
        Lo.make_loss_fn(cfg, c, 0, negative="other", tau=4.5, alpha=0.1, form="paper", chunked=True)


def test_key_dim_and_hook_errors_name_the_fix(tiny_llama):
    import ml_collections  # noqa: PLC0415

    from sycojax.methods.docmem.module import check_key_dim  # noqa: PLC0415
    from sycojax.methods.docmem.run import DocMemError, model_settings  # noqa: PLC0415

    with pytest.raises(ValueError, match="key_dim=2 is too small for orthogonal keys of 10 documents: set key_dim >="):
        check_key_dim(2, 10)
    cfg, _ = tiny_llama
    base = {"hook_block": -1, "gate": "topk", "memory_units": 16, "top_k": 4, "key_dim": 0, "key_activation": "tanh",
            "act": "gelu", "guidance_form": "paper", "negative_key": "other"}
    hook, mc = model_settings(ml_collections.ConfigDict({"method": base}), cfg, 5)
    assert hook == cfg.num_layers - 1 and mc.key_dim == 5
    for change, match in (({"hook_block": cfg.num_layers}, f"the model has blocks 0..{cfg.num_layers - 1}"),
                          ({"key_dim": 3}, "set key_dim >= 5"),
                          ({"negative_key": "zero"}, "a zero key IS the base model"),
                          ({"top_k": 0}, "keeps 1..memory_units units")):
        with pytest.raises(DocMemError, match=match):
            model_settings(ml_collections.ConfigDict({"method": {**base, **change}}), cfg, 5)
