"""kNN memory layers: the straight-through gradients equal their definition; retrieval, featural as the kNN
regression of the FF it samples, product-key top-k; `forward(return_ffn_inputs=True)`; the loop's
`between_steps` seam; the distillation loss trains on a tiny model with a real store."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sycojax.methods.knn import distill as D
from sycojax.methods.knn.layers import (
    KNNFFN,
    KNNConfig,
    init_knn,
    lookup,
    product_key_layer,
    query_through,
    store_key,
    store_layer,
    straight_through,
)
from sycojax.methods.knn.store import KNNStore, StoreSpec
from sycojax.models import BaseFFN, BlockModules, ModelConfig, Module, block_mlp, forward, init_params
from sycojax.models.model import base_ffn
from sycojax.train import ArrayIterator, train
from sycojax.train.config import default_config

CFG = ModelConfig(arch="llama", vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=4, num_heads=4,
                  num_kv_heads=2, head_dim=8, max_position_embeddings=64)


def _rand(key, *shape):
    return jax.random.normal(jax.random.key(key), shape, jnp.float32)


def test_straight_through_cotangents_are_the_seeds_definition():
    q, kn, vn = _rand(0, 2, 5, 4), _rand(1, 2, 5, 4), _rand(2, 2, 5, 3)
    kr, vr = _rand(3, 2, 5, 6, 4), _rand(4, 2, 5, 6, 3)
    gk, gv = _rand(5, 2, 5, 6, 4), _rand(6, 2, 5, 6, 3)  # hand-written cotangents of the returned keys/values
    out, vjp = jax.vjp(straight_through, q, kn, vn, kr, vr)
    np.testing.assert_array_equal(out[0], kr)
    np.testing.assert_array_equal(out[1], vr)
    dq, dkn, dvn, dkr, dvr = vjp((gk, gv))
    np.testing.assert_allclose(dq, gk.sum(-2), rtol=1e-6)  # dQuery = dKeyReturned
    np.testing.assert_allclose(dkn, gk.sum(-2), rtol=1e-6)  # dKeyInserted = dKeyReturned
    np.testing.assert_allclose(dvn, gv.sum(-2), rtol=1e-6)  # dValueInserted = dValueReturned
    assert not np.any(dkr) and not np.any(dvr)  # nothing into the store
    out, vjp = jax.vjp(query_through, q, kr)
    dq, dkr = vjp(gk)
    np.testing.assert_allclose(dq, gk.sum(-2), rtol=1e-6)
    assert not np.any(dkr)


def _store_arrays(keys, values, capacity):
    k = np.zeros((capacity, keys.shape[1]), np.float32)
    v = np.zeros((capacity, values.shape[1]), np.float32)
    ok = np.zeros(capacity, bool)
    k[: len(keys)], v[: len(values)], ok[: len(keys)] = keys, values, True
    return jnp.asarray(k), jnp.asarray(v), jnp.asarray(ok)


def test_lookup_is_exact_top_k_and_skips_empty_slots():
    keys = np.eye(4, dtype=np.float32)
    ks, _, ok = _store_arrays(keys, keys, 6)
    q = jnp.asarray([[0.9, 0.1, 0.0, 0.0]]) / np.hypot(0.9, 0.1)
    idx, sim = lookup(q, ks, ok, 3)
    assert idx[0, 0] == 0 and idx[0, 1] == 1
    assert np.isfinite(sim[0, :2]).all()
    idx, sim = lookup(q, ks, ok, 6)  # more than the 4 stored: the empty slots come back at -inf
    assert np.isneginf(sim[0, 4:]).all()


def test_featural_with_the_ff_samples_stored_is_the_ff_at_those_points():
    params = init_params(CFG, jax.random.key(0))
    c = KNNConfig("featural", CFG.hidden_size, key_dim=32, k=1, init_scale=64.0)
    p = init_knn(jax.random.key(1), c)
    x = _rand(2, 1, 7, CFG.hidden_size)
    ff = base_ffn(block_mlp(params, CFG, 1), x, CFG)
    q = x @ p["w_q"]
    q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)  # the keys a featural layer writes for these tokens
    store = _store_arrays(np.asarray(q[0]), np.asarray(ff[0]), 16)
    out, hits = store_layer(p, x, store, c)
    np.testing.assert_array_equal(hits[0, :, 0], np.arange(7))
    np.testing.assert_allclose(out, ff, atol=1e-4)
    # an empty store returns 0 (the ablated block), not NaN
    empty = _store_arrays(np.zeros((0, 32), np.float32), np.zeros((0, CFG.hidden_size), np.float32), 16)
    out, hits = store_layer(p, x, empty, c)
    assert np.all(np.asarray(out) == 0) and np.all(np.asarray(hits) == -1)


def test_associative_gradients_reach_all_projections_through_the_store():
    c = KNNConfig("associative", CFG.hidden_size, key_dim=8, k=4)
    p = init_knn(jax.random.key(0), c)
    p = dict(p, w_o=_rand(9, CFG.hidden_size, CFG.hidden_size) * 0.1)
    store = _store_arrays(np.asarray(jax.nn.standardize(_rand(1, 10, 8))), np.asarray(_rand(2, 10, CFG.hidden_size)), 12)
    x = _rand(3, 2, 5, CFG.hidden_size)
    g = jax.grad(lambda p: jnp.sum(store_layer(p, x, store, c)[0] ** 2))(p)
    for name in ("w_q", "w_k", "w_v", "w_o", "log_scale"):
        assert float(jnp.abs(g[name]).sum()) > 0, name


def test_product_key_returns_the_best_of_the_cartesian_product():
    c = KNNConfig("product_key", CFG.hidden_size, key_dim=8, k=3, sub_keys=5)
    p = init_knn(jax.random.key(0), c)
    x = _rand(1, 1, 2, CFG.hidden_size)
    out, slot = product_key_layer(p, x, c)
    q = x @ p["w_q"]
    q1, q2 = (q[..., :4] / jnp.linalg.norm(q[..., :4], axis=-1, keepdims=True),
              q[..., 4:] / jnp.linalg.norm(q[..., 4:], axis=-1, keepdims=True))
    full = (q1 @ p["sub_keys"][0].T)[..., :, None] + (q2 @ p["sub_keys"][1].T)[..., None, :]  # all 25 pairs
    best = np.argsort(-np.asarray(full).reshape(1, 2, 25), axis=-1)[..., :3]
    np.testing.assert_array_equal(np.sort(np.asarray(slot), -1), np.sort(best, -1))
    assert out.shape == x.shape


def test_forward_returns_the_ffn_input_each_replacement_read():
    params = init_params(CFG, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (2, 6), 0, CFG.vocab_size)
    pos = jnp.broadcast_to(jnp.arange(6), (2, 6))
    mask = jnp.tril(jnp.ones((6, 6), bool))[None, None].repeat(2, 0)
    mods = BlockModules(ffn={2: Module(BaseFFN(CFG), block_mlp(params, CFG, 2))})
    out = forward(params, tokens, cfg=CFG, positions=pos, mask=mask, modules=mods, return_ffn_inputs=True)
    assert set(out.ffn_inputs) == {2} and out.ffn_inputs[2].shape == (2, 6, CFG.hidden_size)
    ref = forward(params, tokens, cfg=CFG, positions=pos, mask=mask)
    np.testing.assert_allclose(out.logits, ref.logits, atol=1e-5)
    with pytest.raises(ValueError, match="remat"):
        forward(params, tokens, cfg=CFG, positions=pos, mask=mask, modules=mods, return_ffn_inputs=True, remat=True)


def test_distillation_on_a_tiny_model_writes_the_store_and_lowers_the_kl(tmp_path):
    params = init_params(CFG, jax.random.key(0))
    n, t = 32, 8
    tokens = np.asarray(jax.random.randint(jax.random.key(1), (n, t), 1, CFG.vocab_size), np.int32)
    valid = np.ones((n, t), bool)
    h = np.asarray(D.cache_hidden(params, jnp.asarray(tokens), jnp.asarray(valid), cfg=CFG, layer=2))
    rows = {"tokens": tokens, "valid": valid, "h": h}
    layers = {2: KNNConfig("featural", CFG.hidden_size, key_dim=16, k=4)}
    store = KNNStore.open(str(tmp_path / "store2.sqlite"),
                          StoreSpec(key_dim=16, value_dim=CFG.hidden_size, capacity=256, k=4, owner="tiny/block2"))
    writer = D.Writer(CFG, params, layers, {2: store})
    trainable = {"2": init_knn(jax.random.key(2), layers[2])}
    before = D.eval_rows(trainable, params, writer.device_stores(), jnp.asarray(h), jnp.asarray(valid),
                         jnp.asarray(tokens), cfg=CFG, layers=tuple(layers.items()), start=2)[0].sum()
    c = default_config()
    c.train.batch_size, c.train.num_steps, c.ckpt.every, c.logging.progress_bar = 4, 12, 6, False
    c.optim.lr = 3e-3
    res = train(D.make_loss_fn(CFG, layers, temperature=2.0, ce_weight=0.0), trainable, writer.frozen(),
                ArrayIterator(rows, 4, seed=0), c, str(tmp_path / "run"), between_steps=writer.between_steps,
                on_save=writer.on_save)
    assert len(store) > 0 and store.stats()["inserts"] > 0
    assert store.step == 12  # committed with the last checkpoint
    after = D.eval_rows(jax.device_get(res.trainable), params, writer.device_stores(), jnp.asarray(h),
                        jnp.asarray(valid), jnp.asarray(tokens), cfg=CFG, layers=tuple(layers.items()), start=2)[0].sum()
    assert float(after) < float(before)
    mods = D.student_modules(jax.device_get(res.trainable), layers)
    assert isinstance(mods.ffn[2].apply, KNNFFN) and store_key(2) in writer.frozen()["stores"]
