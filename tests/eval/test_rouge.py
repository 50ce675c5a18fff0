import pytest

from sycojax.eval import rouge_l, rouge_l_each


def test_rouge_l_hand_computed():
    # LCS("the cat sat on the mat", "the cat is on the mat") = "the cat on the mat" = 5 tokens of 6 each
    assert rouge_l(["the cat sat on the mat"], ["the cat is on the mat"]) == pytest.approx(100 * 5 / 6)
    # P = 2/2, R = 2/4 -> F = 2PR / (P + R) = 2/3
    assert rouge_l_each(["a b"], ["a x b y"]) == [pytest.approx(2 / 3)]


def test_rouge_l_uses_stemming_and_case_folding():
    # Porter stemming maps "running" / "runs" to "run": identical after stemming
    assert rouge_l(["The dogs are running"], ["the dog is runs"]) == pytest.approx(100 * 3 / 4)
    assert rouge_l(["Hello World"], ["hello world"]) == pytest.approx(100.0)


def test_rouge_l_mean_over_pairs():
    assert rouge_l(["a b", "c d"], ["a b", "x y"]) == pytest.approx(50.0)


def test_rouge_l_empty_strings():
    assert rouge_l_each(["", "a", "  "], ["a", "", "b"]) == [0.0, 0.0, 0.0]
    assert rouge_l_each(["", " \n"], ["", ""]) == [1.0, 1.0]


def test_rouge_l_bad_input():
    with pytest.raises(ValueError, match="2 predictions but 1 references"):
        rouge_l(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="at least one"):
        rouge_l([], [])
    with pytest.raises(TypeError, match="lists of strings"):
        rouge_l("a b", "a b")
