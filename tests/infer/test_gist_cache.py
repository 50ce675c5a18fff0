"""Gist caching equals the masked full forward: batched, different instructions, shared instructions, neg_control."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sycojax.adapters import LoraConfig, init_lora
from sycojax.infer.generate import left_pad
from sycojax.infer.gist_cache import (
    GistCache,
    GistCacheError,
    compress,
    decode,
    forward_cached,
    kv_bytes_per_token,
)
from sycojax.masks import gist_mask, positions_from_valid
from sycojax.models import Adapters, forward

K = 2  # gist tokens


@pytest.fixture(scope="module")
def model(tiny_llama):
    """The tiny model with a trained-looking <GIST> row and a non-zero LoRA (so adapters matter)."""
    cfg, params = tiny_llama
    rs = np.random.RandomState(7)  # numpy noise: no per-shape compilation
    lora = init_lora(params, cfg, LoraConfig(rank=4, alpha=8.0), jax.random.key(7))
    lora = jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + 0.05 * rs.standard_normal(x.shape), jnp.float32), lora)
    gist = jnp.asarray(0.1 * rs.standard_normal((1, cfg.hidden_size)), jnp.float32)
    return cfg, params, Adapters(lora=lora, embeddings=gist, lora_scale=2.0), cfg.vocab_size


def _rows(rs, cfg, lengths):
    return [rs.randint(3, cfg.vocab_size, size=n).tolist() for n in lengths]


@functools.partial(jax.jit, static_argnames=("cfg", "gist_id", "condition"))
def _full_logits(params, tokens, valid, adapters, *, cfg, gist_id, condition):
    mask = gist_mask(tokens, gist_id, valid, condition)
    return forward(params, tokens, cfg=cfg, positions=positions_from_valid(valid), mask=mask, adapters=adapters).logits


def _full_suffix_logits(params, cfg, adapters, gid, prefixes, suffixes, condition="gist"):
    """Logits of `prefix · <GIST>×K · suffix` (left-padded batch) at the suffix positions, right-aligned."""
    rows = [p + [gid] * K + s for p, s in zip(prefixes, suffixes)]
    tokens, valid = left_pad(rows, cfg.pad_token_id, bucket=32)
    logits = _full_logits(params, jnp.asarray(tokens), jnp.asarray(valid), adapters, cfg=cfg, gist_id=gid,
                          condition=condition)
    p = max(map(len, suffixes))
    is_suffix = np.arange(p)[None, :] >= p - np.asarray([len(s) for s in suffixes])[:, None]
    return np.asarray(logits[:, -p:]), is_suffix


def test_cached_logits_equal_masked_full_forward_batched(model):
    cfg, params, adapters, gid = model
    rs = np.random.RandomState(0)
    prefixes = _rows(rs, cfg, (9, 4, 13, 6))  # different instructions, different lengths -> different offsets
    suffixes = _rows(rs, cfg, (5, 11, 3, 8))
    cache = compress(params, cfg, prefixes, gist_id=gid, num_gist_tokens=K, adapters=adapters)
    assert cache.k.shape == (cfg.num_layers, 4, K, cfg.num_kv_heads, cfg.head_dim)
    np.testing.assert_array_equal(cache.offset, [len(p) + K for p in prefixes])  # the original offset, not K
    tokens, valid = left_pad(suffixes, cfg.pad_token_id, bucket=1)
    got = np.asarray(forward_cached(params, cfg, cache, tokens, valid, adapters=adapters))
    want, want_valid = _full_suffix_logits(params, cfg, adapters, gid, prefixes, suffixes)
    np.testing.assert_array_equal(valid, want_valid)
    np.testing.assert_allclose(got[valid], want[valid], atol=1e-4)


def test_one_instruction_many_inputs_and_neg_control(model):
    cfg, params, adapters, gid = model
    rs = np.random.RandomState(1)
    prefix = _rows(rs, cfg, (10,))[0]
    suffixes = _rows(rs, cfg, (4, 7, 2))
    one = compress(params, cfg, [prefix], gist_id=gid, num_gist_tokens=K, adapters=adapters)
    tokens, valid = left_pad(suffixes, cfg.pad_token_id, bucket=1)
    for condition, hide in (("gist", False), ("neg_control", True)):
        got = np.asarray(forward_cached(params, cfg, one.broadcast(3), tokens, valid, adapters=adapters,
                                        hide_gist=hide))
        want, _ = _full_suffix_logits(params, cfg, adapters, gid, [prefix] * 3, suffixes, condition)
        np.testing.assert_allclose(got[valid], want[valid], atol=1e-4)
    # the instruction matters under gist (through the gist K/V) and not at all under neg_control
    other = compress(params, cfg, [_rows(rs, cfg, (10,))[0]], gist_id=gid, num_gist_tokens=K, adapters=adapters)
    a = forward_cached(params, cfg, one.broadcast(3), tokens, valid, adapters=adapters)
    b = forward_cached(params, cfg, other.broadcast(3), tokens, valid, adapters=adapters)
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3
    a = forward_cached(params, cfg, one.broadcast(3), tokens, valid, adapters=adapters, hide_gist=True)
    b = forward_cached(params, cfg, other.broadcast(3), tokens, valid, adapters=adapters, hide_gist=True)
    np.testing.assert_allclose(np.asarray(a)[valid], np.asarray(b)[valid], atol=1e-6)


def _greedy_reference(params, cfg, adapters, gid, prefixes, suffixes, n, condition="gist"):
    """Greedy tokens by recomputing the full masked forward over the whole gisted sequence at every step."""
    rows = [p + [gid] * K + s for p, s in zip(prefixes, suffixes)]
    new = [[] for _ in rows]
    for _ in range(n):
        tokens, valid = left_pad([r + x for r, x in zip(rows, new)], cfg.pad_token_id, bucket=48)  # one shape
        logits = _full_logits(params, jnp.asarray(tokens), jnp.asarray(valid), adapters, cfg=cfg, gist_id=gid,
                              condition=condition)
        for i, t in enumerate(np.asarray(jnp.argmax(logits[:, -1], -1))):
            new[i].append(int(t))
    return new


@pytest.mark.parametrize("hide", [False, True])
def test_batched_greedy_decoding_equals_recomputation(model, hide):
    cfg, params, adapters, gid = model
    rs = np.random.RandomState(2)
    prefixes = _rows(rs, cfg, (7, 12, 3))
    suffixes = _rows(rs, cfg, (6, 2, 9))
    n = 8
    cache = compress(params, cfg, prefixes, gist_id=gid, num_gist_tokens=K, adapters=adapters)
    gen = decode(params, cfg, cache, suffixes, max_new_tokens=n, adapters=adapters, eos_ids=(), hide_gist=hide)
    want = _greedy_reference(params, cfg, adapters, gid, prefixes, suffixes, n, "neg_control" if hide else "gist")
    assert gen.rows() == want
    # a shared instruction: rows taken from one compressed row decode like a one-row batch
    shared = cache.take([1, 1, 1])
    gen = decode(params, cfg, shared, suffixes, max_new_tokens=n, adapters=adapters, eos_ids=(), hide_gist=hide)
    want = _greedy_reference(params, cfg, adapters, gid, [prefixes[1]] * 3, suffixes, n,
                             "neg_control" if hide else "gist")
    assert gen.rows() == want


def test_decode_stops_at_eos(model):
    cfg, params, adapters, gid = model
    rs = np.random.RandomState(2)  # the shapes of the greedy test: its compiled programs are reused
    prefixes, suffixes = _rows(rs, cfg, (7, 12, 3)), _rows(rs, cfg, (6, 2, 9))
    cache = compress(params, cfg, prefixes, gist_id=gid, num_gist_tokens=K, adapters=adapters)
    free = decode(params, cfg, cache, suffixes, max_new_tokens=8, adapters=adapters, eos_ids=())
    stop = free.tokens[0, 2]  # row 0's third token becomes its EOS
    gen = decode(params, cfg, cache, suffixes, max_new_tokens=8, adapters=adapters, eos_ids=(int(stop),))
    for row in range(3):
        toks = list(free.tokens[row])
        first = toks.index(stop) if stop in toks else 8
        assert gen.lengths[row] == first and gen.rows()[row] == toks[:first]


def test_cache_bytes_and_concatenate(model):
    cfg, params, adapters, gid = model
    a = compress(params, cfg, [[5, 6, 7]], gist_id=gid, num_gist_tokens=K, adapters=adapters)
    b = compress(params, cfg, [[8, 9]], gist_id=gid, num_gist_tokens=K, adapters=adapters)
    both = GistCache.concatenate([a, b])
    assert both.batch == 2 and list(np.asarray(both.offset)) == [5, 4]
    assert both.nbytes == 2 * K * kv_bytes_per_token(cfg)


def test_errors(model):
    cfg, params, adapters, gid = model
    with pytest.raises(GistCacheError, match="no room for 2 gist token"):
        compress(params, cfg, [list(range(3, 13))], gist_id=gid, num_gist_tokens=K, adapters=adapters, max_length=11)
    with pytest.raises(GistCacheError, match="real token"):
        compress(params, cfg, [[5, 6]], gist_id=5, num_gist_tokens=K, adapters=adapters)
    with pytest.raises(GistCacheError, match="embeddings"):
        compress(params, cfg, [[5, 6]], gist_id=gid, num_gist_tokens=K, adapters=Adapters())
    with pytest.raises(GistCacheError, match="empty"):
        compress(params, cfg, [[]], gist_id=gid, num_gist_tokens=K, adapters=adapters)
    cache = compress(params, cfg, [[5, 6], [7, 8]], gist_id=gid, num_gist_tokens=K, adapters=adapters)
    with pytest.raises(GistCacheError, match="2 instructions but 3 inputs"):
        decode(params, cfg, cache, [[3], [4], [5]], max_new_tokens=2, adapters=adapters)


def test_empty_cache_decodes_the_whole_prompt_causally(model):
    """G = 0: `decode` is plain causal greedy decoding of what it is given (the uncompressed timing baseline)."""
    cfg, params, adapters, gid = model
    rs = np.random.RandomState(2)  # greedy-test shapes again
    prefixes, suffixes = _rows(rs, cfg, (7, 12, 3)), _rows(rs, cfg, (6, 2, 9))
    prompts = [p + [gid] * K + s for p, s in zip(prefixes, suffixes)]
    gen = decode(params, cfg, GistCache.empty(cfg, 3), prompts, max_new_tokens=8, adapters=adapters, eos_ids=())
    want = _greedy_reference(params, cfg, adapters, gid, prefixes, suffixes, 8, "pos_control")  # rows = prompts
    assert gen.rows() == want
