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


def test_shared_prefix_is_held_once_and_seen_by_every_row():
    # three rows starting with the same two tokens [1, 2]; tails [3], [4, 5], [6]
    tokens = jnp.asarray([[1, 2, 3, 0], [1, 2, 4, 5], [1, 2, 6, 0], [1, 2, 7, 0]], jnp.int32)
    lengths = jnp.asarray([3, 4, 3, 3])
    assert packing.shared_prefix(np.asarray(tokens), np.asarray(lengths)) == 2
    p = packing.Packing(rows=2, length=6, prefix=2)
    packed, pos, mask, starts = packing.pack(tokens, lengths, p)
    np.testing.assert_array_equal(packed, [[1, 2, 3, 4, 5, 0], [1, 2, 6, 7, 0, 0]])
    np.testing.assert_array_equal(pos, [[0, 1, 2, 2, 3, 0], [0, 1, 2, 2, 0, 0]])
    m = np.asarray(mask[0, 0])
    assert m[1].tolist() == [True, True, False, False, False, False]  # the prefix sees only the prefix
    assert m[2].tolist() == [True, True, True, False, False, False]  # row 0's tail: prefix + itself
    assert m[4].tolist() == [True, True, False, True, True, False]  # row 1's tail: prefix + itself, not row 0
    # gather: a position in the prefix reads its one copy, a tail position its row's slot
    h = jnp.arange(2 * 6, dtype=jnp.float32).reshape(2, 6)[..., None]
    got = packing.gather(h, starts, jnp.asarray([[1, 2], [1, 3], [0, 2], [2, 1]]), p)[..., 0]
    np.testing.assert_array_equal(got, [[1, 2], [1, 4], [6, 8], [9, 7]])


def test_shared_prefix_leaves_every_row_a_token_of_its_own():
    assert packing.shared_prefix([[1, 2, 3], [1, 2, 3, 4]], [3, 4]) == 2  # not 3: row 0 would have no tail
    assert packing.shared_prefix([[1, 2], [3, 2]], [2, 2]) == 0
    assert packing.shared_prefix([[1, 2, 3]], [3]) == 0  # one row: nothing to share
    assert packing.shared_prefix([[1, 2, 9, 9], [1, 2, 5, 0]], [2, 3]) == 1  # padding past a row's length ignored
    with pytest.raises(ValueError, match="none of its own"):
        packing.plan([4, 3, 9], rows=2, width=16, prefix=3)
    with pytest.raises(ValueError, match="prefix < length"):
        packing.Packing(2, 4, prefix=4)


def test_packed_forward_with_a_shared_prefix_equals_unpacked(tiny_llama):
    cfg, params = tiny_llama
    rng = np.random.default_rng(1)
    lengths = [9, 6, 12, 7, 10, 8]
    tokens = _rows(rng, lengths, 16, cfg.vocab_size)
    tokens[:, :5] = rng.integers(1, cfg.vocab_size, 5)  # every row begins with the same 5 tokens
    tokens = jnp.asarray(tokens)
    b, t = tokens.shape
    ref = forward(params, tokens, cfg=cfg, positions=jnp.arange(t)[None].repeat(b, 0),
                  mask=causal_padding(jnp.ones(tokens.shape, bool)), return_logits=False).final_hidden
    prefix = packing.shared_prefix(np.asarray(tokens), lengths)
    assert prefix >= 5
    p = packing.plan(lengths, rows=3, width=t, multiple=4, prefix=prefix)
    assert p.prefix == prefix and p.length == -(-(12 + 10 + 9 - 2 * prefix) // 4) * 4
    packed, pos, mask, starts = packing.pack(tokens, jnp.asarray(lengths), p)
    out = forward(params, packed, cfg=cfg, positions=pos, mask=mask, return_logits=False).final_hidden
    got = packing.gather(out, starts, jnp.asarray([list(range(t))] * b), p)
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(got[i, :n], ref[i, :n], atol=1e-5)
