"""Per-row LoRA (`Adapters(lora_per_row=True)`): every batch row patched by its own LoRA, in one forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sycojax.adapters import LoraConfig, init_lora, lora_row, stack_lora_rows
from sycojax.infer.generate import generate
from sycojax.masks.core import causal_padding
from sycojax.models import Adapters, ModelConfig, forward, init_cache, init_params

CONFIGS = {
    "llama": ModelConfig(
        arch="llama", vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4,
        num_kv_heads=2, head_dim=8, max_position_embeddings=64, tie_word_embeddings=True, eos_token_id=2),
    "gpt_neox": ModelConfig(
        arch="gpt_neox", vocab_size=61, hidden_size=32, intermediate_size=64, num_layers=3, num_heads=4,
        num_kv_heads=4, head_dim=8, max_position_embeddings=64, rotary_dim=4, use_parallel_residual=True,
        eos_token_id=2),
}
LCFG = LoraConfig(rank=4, alpha=8.0, targets=("all",))
B, T = 3, 7


def _model(arch):
    cfg = CONFIGS[arch]
    return cfg, init_params(cfg, jax.random.key(0), std=0.1)


def _random_lora(params, cfg, seed):
    """A LoRA whose B is non-zero (init_lora's B = 0 would make every row the base model)."""
    lora = init_lora(params, cfg, LCFG, jax.random.key(seed))
    leaves, tree = jax.tree.flatten(lora)
    keys = jax.random.split(jax.random.key(100 + seed), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def _inputs():
    tokens = jax.random.randint(jax.random.key(1), (B, T), 3, 61)
    valid = jnp.ones((B, T), bool).at[1, :2].set(False)  # row 1 left-padded
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    return tokens, positions, causal_padding(valid)


def _logits(params, cfg, tokens, positions, mask, adapters):
    return forward(params, tokens, cfg=cfg, positions=positions, mask=mask, adapters=adapters).logits


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_rows_with_their_own_lora_equal_each_row_alone(arch):
    cfg, params = _model(arch)
    loras = [_random_lora(params, cfg, s) for s in range(B)]
    tokens, positions, mask = _inputs()
    batched = _logits(params, cfg, tokens, positions, mask,
                      Adapters(lora=stack_lora_rows(loras), lora_scale=LCFG.scale, lora_per_row=True))
    for b in range(B):
        alone = _logits(params, cfg, tokens[b:b + 1], positions[b:b + 1], mask[b:b + 1],
                        Adapters(lora=loras[b], lora_scale=LCFG.scale))
        np.testing.assert_allclose(batched[b], alone[0], atol=1e-5, rtol=0)
    # the rows' LoRAs really differ (the comparison above is not base vs base)
    assert float(jnp.abs(batched[0] - _logits(params, cfg, tokens, positions, mask, None)[0]).max()) > 1e-2


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_equal_rows_equal_the_shared_lora(arch):
    cfg, params = _model(arch)
    lora = _random_lora(params, cfg, 0)
    tokens, positions, mask = _inputs()
    shared = _logits(params, cfg, tokens, positions, mask, Adapters(lora=lora, lora_scale=LCFG.scale))
    rows = _logits(params, cfg, tokens, positions, mask,
                   Adapters(lora=stack_lora_rows([lora] * B), lora_scale=LCFG.scale, lora_per_row=True))
    np.testing.assert_allclose(rows, shared, atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_gradient_per_row_is_each_rows_own_gradient(arch):
    cfg, params = _model(arch)
    loras = [_random_lora(params, cfg, s) for s in range(B)]
    tokens, positions, mask = _inputs()

    def loss(lora, tok, pos, m, per_row):
        logits = _logits(params, cfg, tok, pos, m, Adapters(lora=lora, lora_scale=LCFG.scale, lora_per_row=per_row))
        return jnp.sum(jax.nn.log_softmax(logits)[..., 5])  # a sum over rows: row b's LoRA only sees row b

    rows = stack_lora_rows(loras)
    g = jax.grad(loss)(rows, tokens, positions, mask, True)
    assert jax.tree.map(jnp.shape, g) == jax.tree.map(jnp.shape, rows)
    for b in range(B):
        alone = jax.grad(loss)(loras[b], tokens[b:b + 1], positions[b:b + 1], mask[b:b + 1], False)
        for x, y in zip(jax.tree.leaves(lora_row(g, b)), jax.tree.leaves(alone)):
            np.testing.assert_allclose(x, y, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_cached_decoding_with_per_row_lora_equals_full_forward(arch):
    cfg, params = _model(arch)
    tokens = jax.random.randint(jax.random.key(1), (B, T), 3, 61)
    adapters = Adapters(lora=stack_lora_rows([_random_lora(params, cfg, s) for s in range(B)]),
                        lora_scale=LCFG.scale, lora_per_row=True)
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    full = _logits(params, cfg, tokens, pos, causal_padding(jnp.ones((B, T), bool)), adapters)
    s = T + 1
    causal = (jnp.arange(s)[None, :] <= jnp.arange(T)[:, None])[None, None]
    pre = forward(params, tokens[:, :-1], cfg=cfg, positions=pos[:, :-1], mask=causal[:, :, :-1],
                  cache=init_cache(cfg, B, s), adapters=adapters)
    step = forward(params, tokens[:, -1:], cfg=cfg, positions=pos[:, -1:], mask=causal[:, :, -1:],
                   cache=pre.cache, cache_index=T - 1, adapters=adapters)
    np.testing.assert_allclose(step.logits[:, 0], full[:, -1], atol=1e-5, rtol=0)


def test_generate_with_per_row_lora_equals_each_row_alone():
    """The decode loop (unstacked layers and cache, weight-major products) with a LoRA per row."""
    cfg, params = _model("llama")
    loras = [_random_lora(params, cfg, s) for s in range(2)]
    prompts = [[1, 5, 9, 11, 4], [1, 7, 3]]
    both = generate(params, cfg, prompts, max_new_tokens=6, eos_ids=(),
                    adapters=Adapters(lora=stack_lora_rows(loras), lora_scale=LCFG.scale, lora_per_row=True))
    for b in range(2):
        alone = generate(params, cfg, prompts[b:b + 1], max_new_tokens=6, eos_ids=(),
                         adapters=Adapters(lora=loras[b], lora_scale=LCFG.scale))
        np.testing.assert_array_equal(both.tokens[b], alone.tokens[0])
    base = generate(params, cfg, prompts[:1], max_new_tokens=6, eos_ids=())
    assert not np.array_equal(both.tokens[0], base.tokens[0])  # the LoRA changed what row 0 says


def test_per_row_lora_refuses_a_wrong_row_count_and_a_shared_prefix():
    cfg, params = _model("llama")
    tokens, positions, mask = _inputs()
    rows = Adapters(lora=stack_lora_rows([_random_lora(params, cfg, s) for s in range(2)]), lora_per_row=True)
    with pytest.raises(ValueError, match="per-row LoRA .* batch of 3 rows"):
        _logits(params, cfg, tokens, positions, mask, rows)
    with pytest.raises(ValueError, match="shared prefix"):
        generate(params, cfg, [[1, 5], [1, 6]], max_new_tokens=2, adapters=rows, prefix=[1, 4])
