"""CCM concat_recur / merge_recur masks, sink and "skip" positions: hand-written cases and a loop reference."""

import numpy as np
import pytest

from sycojax.masks import ccm_mask, comp_flags, groups_after, segment_ids, skip_positions

C = 50  # first COMP id
P = 0


def _m(rows):
    return np.array([[c == "1" for c in r] for r in rows], dtype=bool)


# [BOS, a, C, b, C, d] with one COMP token per group
ONE = np.array([[1, 2, C, 3, C, 4]])
ONE_VALID = np.ones_like(ONE, bool)


def test_segment_ids_and_groups_after():
    flags = comp_flags(ONE, C, 1)
    np.testing.assert_array_equal(np.asarray(segment_ids(flags.is_last)), [[2, 2, 2, 1, 1, 0]])
    np.testing.assert_array_equal(np.asarray(groups_after(flags.is_first)), [[2, 2, 1, 1, 0, 0]])


def test_concat_recur_hand_written():
    expected = _m(["100000", "110000", "111000", "001100", "001110", "001011"])
    np.testing.assert_array_equal(np.asarray(ccm_mask(ONE, C, 1, ONE_VALID, "concat_recur"))[0, 0], expected)


def test_merge_recur_hand_written():
    # the last segment sees only the previous COMP group (index 4), not the older one (index 2)
    expected = _m(["100000", "110000", "111000", "001100", "001110", "000011"])
    np.testing.assert_array_equal(np.asarray(ccm_mask(ONE, C, 1, ONE_VALID, "merge_recur"))[0, 0], expected)


def test_sink_keeps_bos_visible_under_left_padding():
    tokens = np.array([[P, 1, 2, C, 3, C, 4]])
    valid = tokens != P
    expected = _m(["0000000", "0100000", "0110000", "0111000", "0101100", "0101110", "0100011"])
    got = np.asarray(ccm_mask(tokens, C, 1, valid, "merge_recur", sink=True))[0, 0]
    np.testing.assert_array_equal(got, expected)
    no_sink = np.asarray(ccm_mask(tokens, C, 1, valid, "merge_recur", sink=False))[0, 0]
    assert not no_sink[6, 1] and got[6, 1]


def test_two_comp_tokens_per_group():
    # [a, C0, C1, b, C0, C1, d]
    tokens = np.array([[2, C, C + 1, 3, C, C + 1, 4]])
    valid = np.ones_like(tokens, bool)
    merge = np.asarray(ccm_mask(tokens, C, 2, valid, "merge_recur"))[0, 0]
    concat = np.asarray(ccm_mask(tokens, C, 2, valid, "concat_recur"))[0, 0]
    np.testing.assert_array_equal(merge[6], [0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(merge[3], [0, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(concat[6], [0, 1, 1, 0, 1, 1, 1])
    np.testing.assert_array_equal(concat[2], [1, 1, 1, 0, 0, 0, 0])


def test_skip_positions_hand_written():
    # [pad, BOS, a, C0, C1, b, c, C0, C1, d]
    tokens = np.array([[P, 1, 2, C, C + 1, 3, 4, C, C + 1, 5]])
    valid = tokens != P
    is_comp = comp_flags(tokens, C, 2).is_comp
    np.testing.assert_array_equal(np.asarray(skip_positions(is_comp, valid, 2)), [[0, 0, 1, 2, 3, 2, 3, 4, 5, 4]])


def test_bad_arguments():
    with pytest.raises(ValueError, match="merge_recur"):
        ccm_mask(ONE, C, 1, ONE_VALID, "merge")
    with pytest.raises(ValueError, match="n_tok"):
        comp_flags(ONE, C, 0)


def _random_batch(rng, b, n_tok):
    rows, valids = [], []
    for _ in range(b):
        n_pad = int(rng.integers(0, 3))
        row = [P] * n_pad + [1]  # BOS
        for _ in range(int(rng.integers(0, 4))):
            row += list(rng.integers(2, 20, size=int(rng.integers(1, 4)))) + [C + j for j in range(n_tok)]
        row += list(rng.integers(2, 20, size=int(rng.integers(0, 3))))
        rows.append(row)
        valids.append([False] * n_pad + [True] * (len(row) - n_pad))
    t = 24  # a fixed length (>= the longest row) so every case reuses the compiled ops
    tokens = np.array([[P] * (t - len(r)) + r for r in rows])  # left-pad to a common length
    valid = np.array([[False] * (t - len(v)) + v for v in valids])
    return tokens, valid


def _reference(tokens, valid, n_tok, attn_type, sink):
    """Semantic loop version: segment = text run + its following COMP group, counted from the left."""
    b, t = tokens.shape
    mask = np.zeros((b, 1, t, t), bool)
    pos = np.zeros((b, t), int)
    for i in range(b):
        is_comp = [C <= x < C + n_tok for x in tokens[i]]
        seg, group = [], []  # seg: groups completed strictly before; group: index of the COMP group (or None)
        done, starts, last_text = 0, 0, -1
        for j in range(t):
            seg.append(done)
            if is_comp[j]:
                if tokens[i, j] == C:
                    starts += 1
                group.append(starts - 1)
                pos[i, j] = last_text + (tokens[i, j] - C) + 1
                if tokens[i, j] == C + n_tok - 1:
                    done += 1
            else:
                group.append(None)
                if valid[i, j]:
                    last_text += 1
                    pos[i, j] = last_text
        first_valid = int(np.argmax(valid[i]))
        for q in range(t):
            for k in range(q + 1):
                if not valid[i, k]:
                    continue
                ok = seg[q] == seg[k]
                if attn_type == "concat_recur":
                    ok |= is_comp[k]
                else:
                    ok |= group[k] is not None and group[k] == seg[q] - 1
                ok |= sink and k == first_valid
                mask[i, 0, q, k] = ok
        pos[i][~valid[i]] = 0
    return mask, pos


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n_tok", [1, 3])
def test_random_against_loop_reference(seed, n_tok):
    rng = np.random.default_rng(seed)
    tokens, valid = _random_batch(rng, 4, n_tok)
    for attn_type in ("concat_recur", "merge_recur"):
        for sink in (False, True):
            ref_mask, ref_pos = _reference(tokens, valid, n_tok, attn_type, sink)
            got = np.asarray(ccm_mask(tokens, C, n_tok, valid, attn_type, sink=sink))
            np.testing.assert_array_equal(got, ref_mask, f"{attn_type} sink={sink}")
    is_comp = comp_flags(tokens, C, n_tok).is_comp
    np.testing.assert_array_equal(np.asarray(skip_positions(is_comp, valid, n_tok)), ref_pos)
