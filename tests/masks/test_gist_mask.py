"""Gist / pos_control / neg_control masks against hand-written matrices and a loop reference."""

import jax
import numpy as np
import pytest

from sycojax.masks import gist_flags, gist_mask, gist_rule, positions_from_valid

G = 99  # gist id
P = 0  # pad id


def _m(rows):
    return np.array([[c == "1" for c in r.replace(" ", "")] for r in rows], dtype=bool)


TOKENS = np.array(
    [
        [1, 2, G, G, 5, 6],  # instruction 1 2, two gist tokens, input 5 6
        [P, P, 1, G, 5, 6],  # left-padded, one gist token
        [P, 1, 2, 3, 4, 5],  # left-padded, no gist token: the rule is all ones
    ]
)
VALID = TOKENS != P

CAUSAL_PADDED_NO_GIST = _m(["000000", "010000", "011000", "011100", "011110", "011111"])

EXPECTED = {
    "gist": [
        _m(["100000", "110000", "111000", "111100", "001110", "001111"]),
        _m(["000000", "000000", "001000", "001100", "000110", "000111"]),
        CAUSAL_PADDED_NO_GIST,
    ],
    "neg_control": [
        _m(["100000", "110000", "111000", "111100", "000010", "000011"]),
        _m(["000000", "000000", "001000", "001100", "000010", "000011"]),
        CAUSAL_PADDED_NO_GIST,
    ],
    "pos_control": [
        _m(["100000", "110000", "111000", "111100", "111110", "111111"]),
        _m(["000000", "000000", "001000", "001100", "001110", "001111"]),
        CAUSAL_PADDED_NO_GIST,
    ],
}


@pytest.mark.parametrize("condition", ["gist", "neg_control", "pos_control"])
def test_hand_written(condition):
    mask = np.asarray(gist_mask(TOKENS, G, VALID, condition))
    assert mask.shape == (3, 1, 6, 6) and mask.dtype == bool
    for b, expected in enumerate(EXPECTED[condition]):
        np.testing.assert_array_equal(mask[b, 0], expected, err_msg=f"{condition} row {b}")


def test_rule_without_causal_is_the_upstream_example():
    # upstream docstring example "a b c G d" (gist rule only, before causal/padding)
    g = np.array([[0, 0, 0, 1, 0]], dtype=bool)
    np.testing.assert_array_equal(
        np.asarray(gist_rule(g, "gist"))[0, 0], _m(["11110", "11110", "11110", "11110", "00011"])
    )
    np.testing.assert_array_equal(
        np.asarray(gist_rule(g, "neg_control"))[0, 0], _m(["11110", "11110", "11110", "11110", "00001"])
    )
    assert np.asarray(gist_rule(np.zeros((1, 5), bool), "gist")).all()


def test_several_gist_ids_and_positions_stay_absolute():
    tokens = np.array([[1, 100, 101, 5]])
    np.testing.assert_array_equal(np.asarray(gist_flags(tokens, [100, 101])), [[0, 1, 1, 0]])
    np.testing.assert_array_equal(np.asarray(gist_flags(tokens, 100)), [[0, 1, 0, 0]])
    # gist tokens keep their absolute positions: the same positions as without gisting
    np.testing.assert_array_equal(np.asarray(positions_from_valid(VALID))[1], [0, 0, 0, 1, 2, 3])


def test_unknown_condition():
    with pytest.raises(ValueError, match="pos_control"):
        gist_mask(TOKENS, G, VALID, "gist_2")


def test_jit():
    f = jax.jit(gist_mask, static_argnames="condition")
    np.testing.assert_array_equal(np.asarray(f(TOKENS, G, VALID, condition="gist")), gist_mask(TOKENS, G, VALID))


def _reference(tokens, gist_id, valid, condition):
    b, t = tokens.shape
    out = np.zeros((b, 1, t, t), dtype=bool)
    for i in range(b):
        gists = [j for j in range(t) if tokens[i, j] == gist_id]
        for q in range(t):
            for k in range(q + 1):
                if not valid[i, k]:
                    continue
                if not gists or condition == "pos_control":
                    ok = True
                elif q <= gists[-1]:
                    ok = k <= gists[-1]
                elif condition == "gist":
                    ok = k >= gists[0]
                else:
                    ok = k > gists[-1]
                out[i, 0, q, k] = ok
    return out


@pytest.mark.parametrize("seed", range(6))
def test_random_against_loop_reference(seed):
    rng = np.random.default_rng(seed)
    b, t = 4, 12
    tokens = rng.integers(1, 20, size=(b, t))
    valid = np.ones((b, t), bool)
    for i in range(b):
        n_pad = rng.integers(0, 4)
        valid[i, :n_pad] = False
        tokens[i, :n_pad] = P
        n_gist = rng.integers(0, 4)  # 0 gists in some rows; gists may be non-contiguous
        where = rng.choice(np.arange(n_pad, t), size=n_gist, replace=False)
        tokens[i, where] = G
    for condition in ("gist", "neg_control", "pos_control"):
        np.testing.assert_array_equal(
            np.asarray(gist_mask(tokens, G, valid, condition)), _reference(tokens, G, valid, condition), condition
        )
