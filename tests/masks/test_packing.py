"""Sequence packing: packed rows give each real token the hidden state it has unpacked; plans and bounds."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sycojax.masks import causal_padding, packing
from sycojax.models import forward


def _rows(rng, lengths, width, vocab):
    tokens = np.zeros((len(lengths), width), np.int32)
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.integers(1, vocab, n)
    return tokens


def test_pack_lays_rows_end_to_end_with_their_own_positions():
    tokens = jnp.asarray([[1, 2, 3, 0], [4, 5, 0, 0], [6, 0, 0, 0], [7, 8, 9, 10]], jnp.int32)
    lengths = jnp.asarray([3, 2, 1, 4])
    p = packing.Packing(rows=2, length=6)
    packed, pos, mask, starts = packing.pack(tokens, lengths, p)
    np.testing.assert_array_equal(packed, [[1, 2, 3, 4, 5, 0], [6, 7, 8, 9, 10, 0]])
    np.testing.assert_array_equal(pos, [[0, 1, 2, 0, 1, 0], [0, 0, 1, 2, 3, 0]])
    np.testing.assert_array_equal(starts, [[0, 3], [0, 1]])
    m = np.asarray(mask[0, 0])
    assert m[4].tolist() == [False, False, False, True, True, False]  # row 2's 2nd token: its own row, causally
    assert m[2].tolist() == [True, True, True, False, False, False]
    assert m[5].tolist() == [False] * 5 + [True]  # the padding slot sees only padding


def test_packed_forward_equals_unpacked_at_every_real_position(tiny_llama):
    cfg, params = tiny_llama
    rng = np.random.default_rng(0)
    lengths = [7, 3, 9, 5, 2, 8]
    tokens = jnp.asarray(_rows(rng, lengths, 12, cfg.vocab_size))
    b, t = tokens.shape
    ref = forward(params, tokens, cfg=cfg, positions=jnp.arange(t)[None].repeat(b, 0),
                  mask=causal_padding(jnp.ones(tokens.shape, bool)), return_logits=False).final_hidden
    p = packing.plan(lengths, rows=3, width=t, multiple=4)
    assert p == packing.Packing(rows=3, length=24)  # 9 + 8 + 7 = 24 slots, not 36
    packed, pos, mask, starts = packing.pack(tokens, jnp.asarray(lengths), p)
    out = forward(params, packed, cfg=cfg, positions=pos, mask=mask, return_logits=False).final_hidden
    where = jnp.asarray([list(range(t))] * b)
    got = packing.gather(out, starts, where)
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(got[i, :n], ref[i, :n], atol=1e-5)


def test_plan_declines_when_packing_saves_little():
    assert packing.plan([10, 10, 10, 10], rows=2, width=10) is None  # full rows: nothing to save
    assert packing.plan([5, 6], rows=1, width=16) is None
    p = packing.plan([3, 4, 5, 9], rows=2, width=16)
    assert p == packing.Packing(2, 16)  # 9 + 5 = 14 -> 16 slots against 32
    with pytest.raises(ValueError, match="groups of 2"):
        packing.pack(jnp.zeros((3, 4), jnp.int32), jnp.ones(3, jnp.int32), p)
    with pytest.raises(ValueError, match="rows >= 1"):
        packing.Packing(0, 4)


def test_gather_reads_trailing_feature_axes():
    h = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
    starts = jnp.asarray([[0, 2], [0, 3]])
    got = packing.gather(h, starts, jnp.asarray([[0, 1], [1, 0], [2, 0], [0, 1]]))
    np.testing.assert_array_equal(got[1], h[0, [3, 2]])
    np.testing.assert_array_equal(got[3], h[1, [3, 4]])
    assert jax.tree.map(jnp.shape, got) == (4, 2, 3)
