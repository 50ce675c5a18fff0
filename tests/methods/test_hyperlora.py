"""HyperLoRA's generator: the tree it emits, the zero generator, contexts batched vs alone, its size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sycojax.adapters import init_lora, lora_row
from sycojax.adapters.lora import count
from sycojax.masks.core import causal_padding
from sycojax.methods import hyperlora as hl
from sycojax.models import Adapters, ModelConfig, forward, init_params

CONFIGS = {
    "llama": ModelConfig(
        arch="llama", vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4,
        num_kv_heads=2, head_dim=8, max_position_embeddings=64, tie_word_embeddings=True),
    "gpt_neox": ModelConfig(
        arch="gpt_neox", vocab_size=61, hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4,
        num_kv_heads=4, head_dim=8, max_position_embeddings=64, rotary_dim=4),
}
# HuggingFaceTB/SmolLM2-135M-Instruct's config.json (shapes only; no weights are loaded)
SMOLLM2_135M = ModelConfig(
    arch="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30, num_heads=9,
    num_kv_heads=3, head_dim=64, max_position_embeddings=8192, rope_theta=100000.0, tie_word_embeddings=True)
HC = hl.HyperConfig(rank=4, alpha=8.0, hidden=16, basis=3)


def _model(arch):
    cfg = CONFIGS[arch]
    return cfg, init_params(cfg, jax.random.key(0), std=0.1)


def _trained_like(gen, seed=7):
    """A generator whose basis V is non-zero (at init V = 0, so every context would give B = 0)."""
    def bump(path, x):
        if path[-1].key == "basis_B":
            return 0.5 * jax.random.normal(jax.random.fold_in(jax.random.key(seed), x.size), x.shape)
        return x
    return jax.tree_util.tree_map_with_path(bump, gen)


def _right_pad(rows, width):
    tokens = np.zeros((len(rows), width), np.int32)
    valid = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        tokens[i, :len(r)], valid[i, :len(r)] = r, True
    return jnp.asarray(tokens), jnp.asarray(valid)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
@pytest.mark.parametrize("targets", [("all",), ("o", "down")])
def test_generated_lora_has_init_loras_structure_shapes_and_dtypes(arch, targets):
    cfg, params = _model(arch)
    if arch == "gpt_neox" and targets != ("all",):
        targets = ("qkv", "down")
    hc = hl.HyperConfig(rank=4, alpha=8.0, targets=targets, hidden=16, basis=3)
    ref = init_lora(params, cfg, hc.lora, jax.random.key(0))
    gen = hl.init_generator(jax.random.key(1), cfg, hc)
    n = len(hc.depths(cfg))
    rows = hl.generate_lora(gen, jnp.ones((2, n, cfg.hidden_size)), hc)
    one = hl.generate_lora(gen, jnp.ones((n, cfg.hidden_size)), hc)
    assert jax.tree.structure(rows) == jax.tree.structure(one) == jax.tree.structure(ref)
    for r, o, x in zip(jax.tree.leaves(rows), jax.tree.leaves(one), jax.tree.leaves(ref)):
        assert (r.shape, o.shape) == ((2, *x.shape), x.shape)
        assert r.dtype == o.dtype == x.dtype
    assert jax.tree.structure(hl.unconditional_lora(gen)) == jax.tree.structure(ref)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_zero_and_fresh_generators_give_the_base_models_logits_exactly(arch):
    cfg, params = _model(arch)
    ctx, ctx_valid = _right_pad([[1, 9, 4, 22, 5], [1, 30, 31]], 6)
    pooled = hl.pool_context(params, ctx, ctx_valid, cfg, HC.depths(cfg))
    tokens = jax.random.randint(jax.random.key(2), (2, 5), 3, 61)
    pos, mask = jnp.broadcast_to(jnp.arange(5), (2, 5)), causal_padding(jnp.ones((2, 5), bool))
    base = forward(params, tokens, cfg=cfg, positions=pos, mask=mask).logits
    fresh = hl.init_generator(jax.random.key(1), cfg, HC)
    for gen in (jax.tree.map(jnp.zeros_like, fresh), fresh):
        lora = hl.generate_lora(gen, pooled, HC)
        out = forward(params, tokens, cfg=cfg, positions=pos, mask=mask, adapters=hl.as_adapters(lora, HC)).logits
        np.testing.assert_array_equal(out, base)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_two_contexts_in_one_batch_equal_each_alone(arch):
    cfg, params = _model(arch)
    gen = _trained_like(hl.init_generator(jax.random.key(1), cfg, HC))
    contexts = [[1, 9, 4, 22, 5, 17, 8], [1, 30, 31]]
    depths = HC.depths(cfg)
    ctx, ctx_valid = _right_pad(contexts, 8)
    pooled = hl.pool_context(params, ctx, ctx_valid, cfg, depths)
    rows = hl.generate_lora(gen, pooled, HC)
    tokens = jax.random.randint(jax.random.key(2), (2, 5), 3, 61)
    pos, mask = jnp.broadcast_to(jnp.arange(5), (2, 5)), causal_padding(jnp.ones((2, 5), bool))
    batched = forward(params, tokens, cfg=cfg, positions=pos, mask=mask, adapters=hl.as_adapters(rows, HC)).logits
    alone = []
    for b, c in enumerate(contexts):
        ctx_b, valid_b = _right_pad([c], len(c))
        pooled_b = hl.pool_context(params, ctx_b, valid_b, cfg, depths)[0]
        np.testing.assert_allclose(pooled[b], pooled_b, atol=1e-5, rtol=0)  # padding changes nothing
        lora_b = hl.generate_lora(gen, pooled_b, HC)
        for x, y in zip(jax.tree.leaves(lora_row(rows, b)), jax.tree.leaves(lora_b)):
            np.testing.assert_allclose(x, y, atol=1e-5, rtol=0)
        out = forward(params, tokens[b:b + 1], cfg=cfg, positions=pos[:1], mask=mask[:1],
                      adapters=Adapters(lora=lora_b, lora_scale=HC.lora.scale)).logits
        np.testing.assert_allclose(batched[b], out[0], atol=1e-5, rtol=0)
        alone.append(out[0])
    # the two contexts gave different LoRAs, and those change the logits
    swapped = forward(params, tokens[:1], cfg=cfg, positions=pos[:1], mask=mask[:1],
                      adapters=Adapters(lora=lora_row(rows, 1), lora_scale=HC.lora.scale)).logits[0]
    assert float(jnp.abs(swapped - alone[0]).max()) > 1e-3


def test_generator_for_smollm2_135m_has_at_most_12m_params():
    hc = hl.HyperConfig()  # rank 8, all seven linears, 4 depths, hidden 128, basis 8
    shapes = jax.eval_shape(lambda k: hl.init_generator(k, SMOLLM2_135M, hc), jax.random.key(0))
    trained, norm = hl.split_trained(shapes)
    n = count(trained)
    print(f"HyperLoRA generator params at SmolLM2-135M shapes: {n:,} trained (+ {count(norm):,} reader_norm)")
    d, L, r, k, h = 576, 30, hc.rank, hc.basis, hc.hidden
    in_plus_out = (576 + 576) * 2 + (576 + 192) * 2 + (576 + 1536) * 3  # q, o; k, v; gate, up, down
    expected = (4 * d * h + h) + L * 7 * h * 2 * r * k + L * k * in_plus_out + L * r * in_plus_out
    assert n == expected
    assert count(norm) == 2 * 4 * d  # not trained: the training contexts' mean and 1/std (set_reader_norm)
    assert n <= 12_000_000
    assert hc.depths(SMOLLM2_135M) == (8, 15, 22, 30)


def test_mismatched_generator_and_bad_read_layers_fail_with_one_clear_error(tiny_llama):
    cfg, _ = tiny_llama
    gen = hl.init_generator(jax.random.key(0), cfg, HC)
    n = len(HC.depths(cfg))
    with pytest.raises(hl.HyperError, match="rank=4.*HyperConfig says rank=8"):
        hl.generate_lora(gen, jnp.ones((n, cfg.hidden_size)), hl.HyperConfig(rank=8, hidden=16, basis=3))
    with pytest.raises(hl.HyperError, match=f"reads {n} depths"):
        hl.generate_lora(gen, jnp.ones((n + 1, cfg.hidden_size)), HC)
    with pytest.raises(hl.HyperError, match="hidden states 0..2"):
        hl.HyperConfig(read_layers=(1, 5)).depths(cfg)
