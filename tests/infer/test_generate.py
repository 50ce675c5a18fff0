import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sycojax.infer.generate import Sampling, generate, left_pad
from sycojax.masks import causal_padding, positions_from_valid
from sycojax.models import SequenceTooLong, forward, init_cache, restack_cache, unstack_cache, unstack_layers


@functools.partial(jax.jit, static_argnames="cfg")
def _forward_padded(params, ids, n, cfg):
    valid = jnp.arange(ids.shape[1])[None] < n
    return forward(params, ids, cfg=cfg, positions=positions_from_valid(valid), mask=causal_padding(valid)).logits[0]


def _full_logits(params, cfg, ids):
    """Logits of one sequence without a cache (right-padded to 64 so one compilation serves all lengths)."""
    padded = np.zeros((1, 64), np.int32)
    padded[0, : len(ids)] = ids
    return _forward_padded(params, jnp.asarray(padded), len(ids), cfg)[: len(ids)]


def test_cached_decoding_equals_full_recomputation(tiny_llama):
    cfg, params = tiny_llama
    ids = np.random.RandomState(0).randint(3, cfg.vocab_size, size=20)
    full = _full_logits(params, cfg, ids)
    p, s = 12, 24
    cache = init_cache(cfg, 1, s)
    pos = jnp.arange(p)[None]
    mask = (jnp.arange(s)[None, :] <= jnp.arange(p)[:, None])[None, None]
    out = forward(params, jnp.asarray(ids[:p])[None], cfg=cfg, positions=pos, mask=mask, cache=cache)
    np.testing.assert_allclose(out.logits[0], full[:p], atol=1e-5)
    cache = out.cache
    for t in range(p, len(ids)):
        m = (jnp.arange(s) <= t)[None, None, None, :]
        o = forward(params, jnp.asarray([[ids[t]]]), cfg=cfg, positions=jnp.asarray([[t]]), mask=m,
                    cache=cache, cache_index=t)
        cache = o.cache
        np.testing.assert_allclose(o.logits[0, 0], full[t], atol=1e-5)


def test_unstacked_layers_and_cache_equal_the_scanned_forward(tiny_llama):
    """Decoding runs over per-layer weight and cache buffers (`unstack_layers`): same logits, same cache."""
    cfg, params = tiny_llama
    ids = jnp.asarray(np.random.RandomState(1).randint(3, cfg.vocab_size, size=(2, 9)))
    s = 16
    pos = jnp.broadcast_to(jnp.arange(9)[None], (2, 9))
    mask = jnp.broadcast_to((jnp.arange(s)[None, :] <= jnp.arange(9)[:, None])[None, None], (2, 1, 9, s))
    ref = forward(params, ids, cfg=cfg, positions=pos, mask=mask, cache=init_cache(cfg, 2, s), return_hidden=True)
    got = forward(unstack_layers(params, cfg), ids, cfg=cfg, positions=pos, mask=mask,
                  cache=unstack_cache(init_cache(cfg, 2, s)), return_hidden=True)
    np.testing.assert_allclose(got.logits, ref.logits, atol=1e-5)
    np.testing.assert_allclose(np.stack(got.hidden_states), np.stack(ref.hidden_states), atol=1e-5)
    for name in ("k", "v"):
        np.testing.assert_allclose(restack_cache(got.cache, cfg.num_kv_heads)[name], ref.cache[name], atol=1e-5)


def _greedy_reference(params, cfg, ids, n):
    ids = list(ids)
    new = []
    for _ in range(n):
        nxt = int(jnp.argmax(_full_logits(params, cfg, ids)[-1]))
        if nxt in cfg.eos_ids:
            break
        ids.append(nxt)
        new.append(nxt)
    return new


def test_generate_greedy_matches_recomputation_and_left_padding(tiny_llama):
    cfg, params = tiny_llama
    rs = np.random.RandomState(1)
    prompts = [rs.randint(3, cfg.vocab_size, size=n).tolist() for n in (5, 17, 9)]
    batch = generate(params, cfg, prompts, max_new_tokens=8).rows()
    for prompt, row in zip(prompts, batch):
        alone = generate(params, cfg, [prompt], max_new_tokens=8).rows()[0]
        assert row == alone  # a left-padded batch equals each prompt alone
        assert row == _greedy_reference(params, cfg, prompt, 8)


def test_generate_stops_at_eos(tiny_llama):
    cfg, params = tiny_llama
    prompt = [5, 6, 7]
    first = _greedy_reference(params, cfg, prompt, 1)[0]
    g = generate(params, cfg, [prompt], max_new_tokens=6, eos_ids=[first])
    assert g.lengths[0] == 0 and g.rows() == [[]]


def test_sampling_is_seeded_and_top_p_tiny_keeps_greedy(tiny_llama):
    cfg, params = tiny_llama
    prompts = [[4, 5, 6, 7]]
    a = generate(params, cfg, prompts, max_new_tokens=6, sampling=Sampling(1.0, 0.9), seed=3).rows()
    b = generate(params, cfg, prompts, max_new_tokens=6, sampling=Sampling(1.0, 0.9), seed=3).rows()
    assert a == b
    nearly_greedy = generate(params, cfg, prompts, max_new_tokens=6, sampling=Sampling(1.0, 1e-6), seed=5).rows()
    assert nearly_greedy == generate(params, cfg, prompts, max_new_tokens=6).rows()


def test_too_long_prompt_is_a_clear_error(tiny_llama):
    cfg, params = tiny_llama
    with pytest.raises(SequenceTooLong, match="context window is 256"):
        generate(params, cfg, [[3] * 250], max_new_tokens=10)


def test_left_pad_rejects_empty_prompt():
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1, 2], []], 0)


def test_shared_prefix_equals_prefix_in_every_prompt(tiny_llama):
    cfg, params = tiny_llama
    rs = np.random.RandomState(2)
    prefix = rs.randint(3, cfg.vocab_size, size=7).tolist()
    prompts = [rs.randint(3, cfg.vocab_size, size=n).tolist() for n in (4, 11)]
    shared = generate(params, cfg, prompts, max_new_tokens=6, prefix=prefix).rows()
    for prompt, row in zip(prompts, shared):
        assert row == _greedy_reference(params, cfg, prefix + prompt, 6)


@pytest.mark.parametrize("batch", [1, 3])
def test_decode_loop_updates_each_layer_cache_in_place(tiny_llama, monkeypatch, batch):
    """The compiled decode loop copies no layer's cache buffer: each token's K/V is written in place and attention
    reads the buffer as it is (`layers.attention_merged_cache`). A reshape of the updated buffer made XLA
    duplicate the update at batch 1: two copies of every layer's cache per token, ~12% of batch-1 decoding."""
    import re

    import sycojax.infer.generate as G

    cfg, params = tiny_llama
    hlo = []
    jitted = G._generate

    def capture(*args, **kwargs):
        hlo.append(jitted.lower(*args, **kwargs).compile().as_text())
        return jitted(*args, **kwargs)

    monkeypatch.setattr(G, "_generate", capture)
    prompts = [[5, 6, 7, 8, 9][: 3 + i] for i in range(batch)]
    generate(params, cfg, prompts, max_new_tokens=5, eos_ids=[])
    copied = set(re.findall(r"= f32\[([0-9,]+)\]\{[0-9,]*\} copy\(", hlo[0]))
    bm, hd = batch * cfg.num_kv_heads, cfg.head_dim  # per-layer buffers: K (b·m, hd, S), V (b·m, S, hd)
    cache_shapes = {s for s in copied if re.fullmatch(rf"{bm},({hd},\d+|\d+,{hd})", s)}
    assert not cache_shapes, f"the decode loop copies cache buffers {cache_shapes}"


@pytest.mark.parametrize("scale", [0.3, 3.0, 8.0])
def test_top_p_cutoff_equals_the_full_sort(scale):
    """`top_p_cutoff` reads the nucleus off the top 1024 logits, sorting the vocabulary only when the nucleus is
    wider (flat rows, small scale): the same cutoff as sorting everything, peaked rows and flat rows alike."""
    from sycojax.infer.generate import TOP_P_CANDIDATES, top_p_cutoff

    logits = jax.random.normal(jax.random.key(0), (4, 4096)) * scale
    for top_p in (0.5, 0.9, 0.95):
        s = np.sort(np.asarray(logits, np.float64), axis=-1)[:, ::-1]
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        keep = np.cumsum(p, -1) - p < top_p
        want = np.where(keep, s, np.inf).min(-1, keepdims=True)
        got = jax.jit(top_p_cutoff, static_argnums=1)(logits, top_p)
        np.testing.assert_allclose(got, want, rtol=1e-5)
        if scale == 0.3:  # flat: the nucleus is far wider than the candidates, the sort path ran
            assert keep.sum(-1).min() > TOP_P_CANDIDATES
        if scale == 8.0:  # peaked: inside the candidates
            assert keep.sum(-1).max() < TOP_P_CANDIDATES
