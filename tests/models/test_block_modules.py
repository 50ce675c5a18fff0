"""Per-block modules (`BlockModules`): hooks on block outputs and FF replacements, LLaMA and GPT-NeoX.

Without modules the forward is the plain model's single layer scan; a zero hook and the base FF as a
replacement leave the logits unchanged; a module on block i changes nothing below it; gradients reach the
module trees; cached decoding with modules equals recomputation; `hidden_at` + `start_layer` resume.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sycojax.adapters import LoraConfig, init_lora
from sycojax.models import (
    Adapters,
    BaseFFN,
    BlockModules,
    ModelConfig,
    Module,
    block_mlp,
    forward,
    hidden_at,
    init_cache,
    init_params,
    unstack_cache,
    unstack_layers,
)

CONFIGS = {
    "llama": ModelConfig(
        arch="llama", vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=4, num_heads=4,
        num_kv_heads=2, head_dim=8, max_position_embeddings=64),
    "neox_parallel": ModelConfig(
        arch="gpt_neox", vocab_size=61, hidden_size=32, intermediate_size=64, num_layers=4, num_heads=4,
        num_kv_heads=4, head_dim=8, max_position_embeddings=64, rotary_dim=4, use_parallel_residual=True),
    "neox_sequential": ModelConfig(
        arch="gpt_neox", vocab_size=61, hidden_size=32, intermediate_size=64, num_layers=4, num_heads=4,
        num_kv_heads=4, head_dim=8, max_position_embeddings=64, rotary_dim=4, use_parallel_residual=False),
}
B, T, K = 2, 6, 3  # rows, tokens, document-key size


def keyed_mlp(p, h, ctx):
    """A small residual module gated by a per-row key from `module_ctx` (the shape of a document memory)."""
    u = jax.nn.gelu(h @ p["up"].T) * jnp.tanh(ctx["key"] @ p["gate"].T)[:, None, :]
    return u @ p["down"].T


def init_keyed(rng, d, m=8, zero_out=False):
    a, b, c = jax.random.split(rng, 3)
    down = jnp.zeros((d, m)) if zero_out else 0.3 * jax.random.normal(c, (d, m))
    return {"up": 0.3 * jax.random.normal(a, (m, d)), "gate": jax.random.normal(b, (m, K)), "down": down}


def other_ffn(p, x, ctx):
    return jnp.tanh(x @ p["w"].T)


def _setup(name):
    cfg = CONFIGS[name]
    params = init_params(cfg, jax.random.key(0), std=0.1)
    tokens = jax.random.randint(jax.random.key(1), (B, T), 0, cfg.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((T, T), bool)), (B, 1, T, T))
    ctx = {"key": jax.random.normal(jax.random.key(2), (B, K))}
    return cfg, params, {"tokens": tokens, "positions": positions, "mask": mask}, ctx


def _run(cfg, params, inputs, modules=None, ctx=None, **kw):
    fn = jax.jit(lambda p, m, c: forward(p, inputs["tokens"], cfg=cfg, positions=inputs["positions"],
                                         mask=inputs["mask"], modules=m, module_ctx=c, return_hidden=True, **kw))
    return fn(params, modules, ctx)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_without_modules_the_forward_is_the_plain_single_scan(name):
    cfg, params, inputs, _ = _setup(name)

    def f(modules):
        return lambda p: forward(p, inputs["tokens"], cfg=cfg, positions=inputs["positions"], mask=inputs["mask"],
                                 modules=modules, return_hidden=True)

    plain = str(jax.make_jaxpr(f(None))(params))
    assert plain.count("scan[") == 1
    assert str(jax.make_jaxpr(f(BlockModules()))(params)) == plain  # empty modules: the same program
    a, b = _run(cfg, params, inputs), _run(cfg, params, inputs, BlockModules())
    np.testing.assert_array_equal(a.logits, b.logits)
    np.testing.assert_array_equal(a.hidden_states, b.hidden_states)
    # with modules, one scan per run of plain blocks: [0], {1}, [2, 3] -> 2 scans, block 1 unrolled
    m = BlockModules(hooks={1: Module(keyed_mlp, init_keyed(jax.random.key(3), cfg.hidden_size))})
    ctx = {"key": jnp.ones((B, K))}
    hooked = str(jax.make_jaxpr(lambda p: forward(p, inputs["tokens"], cfg=cfg, positions=inputs["positions"],
                                                  mask=inputs["mask"], modules=m, module_ctx=ctx))(params))
    assert hooked.count("scan[") == 2


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_zero_initialised_hooks_leave_the_logits_unchanged(name):
    cfg, params, inputs, ctx = _setup(name)
    base = _run(cfg, params, inputs)
    zero = {i: Module(keyed_mlp, init_keyed(jax.random.key(i), cfg.hidden_size, zero_out=True)) for i in (0, 2)}
    out = _run(cfg, params, inputs, BlockModules(hooks=zero), ctx)
    np.testing.assert_allclose(out.logits, base.logits, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out.hidden_states, base.hidden_states, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_hook_changes_nothing_below_its_block_and_everything_after(name):
    cfg, params, inputs, ctx = _setup(name)
    base = _run(cfg, params, inputs)
    at = 2
    m = BlockModules(hooks={at: Module(keyed_mlp, init_keyed(jax.random.key(3), cfg.hidden_size))})
    out = _run(cfg, params, inputs, m, ctx)
    # hidden_states[j] is block j-1's output: entries 0..at are below (or entering) the hooked block
    np.testing.assert_allclose(out.hidden_states[: at + 1], base.hidden_states[: at + 1], rtol=0, atol=1e-6)
    for j in range(at + 1, cfg.num_layers + 1):
        assert np.abs(out.hidden_states[j] - base.hidden_states[j]).max() > 1e-3, j
    assert np.abs(out.logits - base.logits).max() > 1e-3
    # the hook reads module_ctx: another key, another output
    other = _run(cfg, params, inputs, m, {"key": -ctx["key"]})
    assert np.abs(other.logits - out.logits).max() > 1e-3


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_base_ffn_as_replacement_is_the_base_model_and_another_ffn_changes_it(name):
    cfg, params, inputs, ctx = _setup(name)
    base = _run(cfg, params, inputs)
    same = BlockModules(ffn={i: Module(BaseFFN(cfg), block_mlp(params, cfg, i)) for i in (1, 3)})
    out = _run(cfg, params, inputs, same, ctx)
    np.testing.assert_allclose(out.logits, base.logits, rtol=0, atol=1e-6)
    np.testing.assert_allclose(out.hidden_states, base.hidden_states, rtol=0, atol=1e-6)

    w = 0.3 * jax.random.normal(jax.random.key(4), (cfg.hidden_size, cfg.hidden_size))
    diff = BlockModules(ffn={1: Module(other_ffn, {"w": w})})
    out = _run(cfg, params, inputs, diff, ctx)
    np.testing.assert_allclose(out.hidden_states[:2], base.hidden_states[:2], rtol=0, atol=1e-6)
    assert np.abs(out.hidden_states[2] - base.hidden_states[2]).max() > 1e-3
    assert np.abs(out.logits - base.logits).max() > 1e-3
    # both on one block: the FF replaced, then the hook on the block's output
    both = BlockModules(ffn={1: Module(BaseFFN(cfg), block_mlp(params, cfg, 1))},
                        hooks={1: Module(keyed_mlp, init_keyed(jax.random.key(5), cfg.hidden_size, zero_out=True))})
    np.testing.assert_allclose(_run(cfg, params, inputs, both, ctx).logits, base.logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["llama", "neox_sequential"])
def test_gradients_reach_the_module_tree_and_the_base_sees_a_zero_hook_as_absent(name):
    cfg, params, inputs, ctx = _setup(name)
    target = jax.random.randint(jax.random.key(6), (B, T), 0, cfg.vocab_size)

    def loss(base, modules):
        out = forward(base, inputs["tokens"], cfg=cfg, positions=inputs["positions"], mask=inputs["mask"],
                      modules=modules, module_ctx=ctx)
        logp = jax.nn.log_softmax(out.logits)
        return -jnp.take_along_axis(logp, target[..., None], -1).mean()

    def modules_of(trees):
        return BlockModules(hooks={1: Module(keyed_mlp, trees["hook"])},
                            ffn={2: Module(other_ffn, trees["ffn"])})

    trees = {"hook": init_keyed(jax.random.key(7), cfg.hidden_size),
             "ffn": {"w": 0.3 * jax.random.normal(jax.random.key(8), (cfg.hidden_size, cfg.hidden_size))}}
    # the trainable tree alone (the base is a frozen argument): every module weight gets a finite, nonzero grad
    g = jax.jit(jax.grad(lambda t, base: loss(base, modules_of(t))))(trees, params)
    assert jax.tree.structure(g) == jax.tree.structure(trees)
    for path, leaf in jax.tree.flatten_with_path(g)[0]:
        assert np.all(np.isfinite(leaf)) and np.abs(leaf).max() > 0, path
    # grads w.r.t. a BlockModules are a BlockModules of grads
    gm = jax.grad(loss, argnums=1)(params, modules_of(trees))
    np.testing.assert_allclose(gm.hooks[1].params["down"], g["hook"]["down"], rtol=1e-5, atol=1e-7)

    # with a zero-initialised hook, grads w.r.t. (base, modules): the base's are those without the module,
    # and of the hook only its zero output projection moves (the others see a zero upstream gradient)
    zero = BlockModules(hooks={1: Module(keyed_mlp, init_keyed(jax.random.key(7), cfg.hidden_size, zero_out=True))})
    gb, gz = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, zero)
    gb0 = jax.jit(jax.grad(loss))(params, None)
    for a, b in zip(jax.tree.leaves(gb), jax.tree.leaves(gb0)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    hook = gz.hooks[1].params
    assert np.abs(hook["down"]).max() > 0
    np.testing.assert_array_equal(hook["up"], 0)
    np.testing.assert_array_equal(hook["gate"], 0)


@pytest.mark.parametrize("name", ["llama", "neox_parallel"])
def test_modules_compose_with_lora_and_remat(name):
    # LoRA slices with the layers into the runs; a zero hook keeps LoRA's logits and LoRA's gradients
    cfg, params, inputs, ctx = _setup(name)
    lcfg = LoraConfig(rank=2, alpha=4.0)
    lora = init_lora(params, cfg, lcfg, jax.random.key(9))
    lora = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(10), x.shape), lora)  # B != 0
    zero = BlockModules(hooks={1: Module(keyed_mlp, init_keyed(jax.random.key(3), cfg.hidden_size, zero_out=True))})

    def loss(lora, modules, remat):
        out = forward(params, inputs["tokens"], cfg=cfg, positions=inputs["positions"], mask=inputs["mask"],
                      adapters=Adapters(lora=lora, lora_scale=lcfg.scale), modules=modules, module_ctx=ctx,
                      remat=remat)
        return jnp.sum(jnp.tanh(out.logits)), out.logits

    (_, want), g_want = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=2)(lora, None, False)
    (_, got), g_got = jax.jit(jax.value_and_grad(loss, has_aux=True), static_argnums=2)(lora, zero, True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())  # fp32 rounding of another order


def test_jit_traces_once_for_new_module_params():
    cfg, params, inputs, ctx = _setup("llama")
    traces = []

    @jax.jit
    def logits(trees, c):
        traces.append(1)
        m = BlockModules(hooks={2: Module(keyed_mlp, trees)})
        return forward(params, inputs["tokens"], cfg=cfg, positions=inputs["positions"], mask=inputs["mask"],
                       modules=m, module_ctx=c).logits

    a = logits(init_keyed(jax.random.key(1), cfg.hidden_size), ctx)
    b = logits(init_keyed(jax.random.key(2), cfg.hidden_size), {"key": -ctx["key"]})
    assert len(traces) == 1 and np.abs(a - b).max() > 1e-3
    eager = forward(params, inputs["tokens"], cfg=cfg, positions=inputs["positions"], mask=inputs["mask"],
                    modules=BlockModules(hooks={2: Module(keyed_mlp, init_keyed(jax.random.key(1), cfg.hidden_size))}),
                    module_ctx=ctx).logits
    np.testing.assert_allclose(a, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["llama", "neox_parallel"])
def test_cached_decoding_with_modules_equals_recomputation(name):
    cfg, params, inputs, ctx = _setup(name)
    w = 0.3 * jax.random.normal(jax.random.key(4), (cfg.hidden_size, cfg.hidden_size))
    m = BlockModules(hooks={1: Module(keyed_mlp, init_keyed(jax.random.key(3), cfg.hidden_size))},
                     ffn={1: Module(other_ffn, {"w": w}), 3: Module(other_ffn, {"w": -w})})
    tokens, positions = inputs["tokens"], inputs["positions"]
    full = forward(params, tokens, cfg=cfg, positions=positions, mask=inputs["mask"], modules=m, module_ctx=ctx)
    s, p = T + 2, T - 2  # prefill p tokens, then decode the rest one at a time
    causal = jnp.arange(s)[None, :] <= jnp.arange(T)[:, None]  # (T, S)

    def mask(a, b):
        return jnp.broadcast_to(causal[a:b], (B, 1, b - a, s))

    run = jax.jit(lambda prm, tok, pos, msk, cache, idx: forward(prm, tok, cfg=cfg, positions=pos, mask=msk,
                                                                 modules=m, module_ctx=ctx, cache=cache,
                                                                 cache_index=idx))
    pre = run(params, tokens[:, :p], positions[:, :p], mask(0, p), init_cache(cfg, B, s), 0)
    np.testing.assert_allclose(pre.logits, full.logits[:, :p], rtol=1e-5, atol=1e-5)
    stacked, unstacked = pre.cache, unstack_cache(pre.cache)
    dec = unstack_layers(params, cfg)
    for t in range(p, T):
        one = (tokens[:, t:t + 1], positions[:, t:t + 1], mask(t, t + 1))
        o = run(params, *one, stacked, t)  # the stacked cache (prefill layout)
        u = run(dec, *one, unstacked, t)  # per-layer buffers (generate's decode loop)
        stacked, unstacked = o.cache, u.cache
        np.testing.assert_allclose(o.logits[:, 0], full.logits[:, t], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(u.logits[:, 0], full.logits[:, t], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["llama", "neox_sequential"])
def test_hidden_at_then_start_layer_resumes_the_forward(name):
    cfg, params, inputs, ctx = _setup(name)
    at = 2
    m = BlockModules(hooks={at: Module(keyed_mlp, init_keyed(jax.random.key(3), cfg.hidden_size))})
    full = _run(cfg, params, inputs, m, ctx)
    common = {"cfg": cfg, "positions": inputs["positions"], "mask": inputs["mask"]}
    h = hidden_at(params, inputs["tokens"], layer=at, **common)  # base only: below the hook nothing changes
    np.testing.assert_allclose(h, full.hidden_states[at], rtol=0, atol=1e-6)
    rest = forward(params, None, embeddings=h, start_layer=at, modules=m, module_ctx=ctx, return_hidden=True,
                   **common)
    np.testing.assert_allclose(rest.logits, full.logits, rtol=1e-5, atol=1e-6)
    assert rest.hidden_states.shape[0] == cfg.num_layers - at + 1
    np.testing.assert_allclose(rest.hidden_states, full.hidden_states[at:], rtol=1e-5, atol=1e-6)
    # hidden_at applies the modules of the blocks below `layer`
    np.testing.assert_allclose(hidden_at(params, inputs["tokens"], layer=at + 1, modules=m, module_ctx=ctx, **common),
                               full.hidden_states[at + 1], rtol=1e-5, atol=1e-6)


def test_bad_modules_get_one_clear_error():
    cfg, params, inputs, ctx = _setup("llama")
    common = {"cfg": cfg, "positions": inputs["positions"], "mask": inputs["mask"], "module_ctx": ctx}
    hook = Module(keyed_mlp, init_keyed(jax.random.key(3), cfg.hidden_size))
    with pytest.raises(ValueError, match=r"hook on block 4: the model has blocks 0\.\.3"):
        forward(params, inputs["tokens"], modules=BlockModules(hooks={4: hook}), **common)
    with pytest.raises(TypeError, match="expected a Module"):
        forward(params, inputs["tokens"], modules=BlockModules(ffn={0: other_ffn}), **common)
    bad = Module(lambda p, x, c: x[..., :3], None)
    with pytest.raises(ValueError, match=r"the ffn module of block 1 returned shape \(2, 6, 3\)"):
        forward(params, inputs["tokens"], modules=BlockModules(ffn={1: bad}), **common)
    with pytest.raises(ValueError, match="start_layer > 0 needs"):
        forward(params, inputs["tokens"], start_layer=1, **common)


@pytest.mark.parametrize("arch", ["llama", "neox_parallel"])
def test_kv_mix_with_identity_weights_is_the_plain_forward_and_mixing_changes_only_later_rows(arch):
    """`forward(kv_mix=(W, rows))` replaces the K/V of `rows` by `W @ K` / `W @ V` in every layer (CCM-merge's
    running mean): identity weights change nothing; mixing row 3's K/V leaves the logits of rows 0..2 unchanged."""
    cfg = CONFIGS[arch]
    params = init_params(cfg, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (B, T), 0, cfg.vocab_size)
    pos = jnp.broadcast_to(jnp.arange(T), (B, T))
    mask = jnp.tril(jnp.ones((T, T), bool))[None, None].repeat(B, 0)
    ref = forward(params, tokens, cfg=cfg, positions=pos, mask=mask).logits
    eye = jnp.broadcast_to(jnp.eye(T), (B, T, T))
    same = forward(params, tokens, cfg=cfg, positions=pos, mask=mask, kv_mix=(eye, jnp.ones((B, T), bool))).logits
    np.testing.assert_allclose(same, ref, atol=1e-5)
    w = eye.at[:, 3, :].set(jnp.where(jnp.arange(T) < 3, 1 / 3, 0.0))  # row 3 := mean of rows 0..2
    rows = jnp.zeros((B, T), bool).at[:, 3].set(True)
    mixed = forward(params, tokens, cfg=cfg, positions=pos, mask=mask, kv_mix=(w, rows)).logits
    np.testing.assert_allclose(mixed[:, :3], ref[:, :3], atol=1e-5)
    assert float(jnp.abs(mixed[:, 4:] - ref[:, 4:]).max()) > 1e-4
    with pytest.raises(ValueError, match="KV cache"):
        forward(params, tokens, cfg=cfg, positions=pos, mask=mask, kv_mix=(w, rows),
                cache=init_cache(cfg, B, T, jnp.float32))
