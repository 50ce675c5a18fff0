"""LoRA compression of gisting instructions: queries never hold the evaluated input, one teacher for every rank,
eval.json entries added without removing others, bad ranks / empty splits are clear errors (tiny random model)."""

import dataclasses
import json
import types

import numpy as np
import pytest
from support.chat_tokenizer import CharChatTokenizer

from sycojax.methods import gist as G
from sycojax.methods import gist_lora as gl


class Tok(CharChatTokenizer):
    """The char-level chat tokenizer with a size (gist ids must lie past it), as in test_gist.py."""

    def __len__(self):
        return self.vocab_size

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        return super().apply_chat_template(messages, tokenize, add_generation_prompt)


SEEN_INSTR = "Repeat the input"
SPLITS = {
    "train": [
        {"instruction": SEEN_INSTR, "input": "xxxx", "output": "xxxx", "source": "t:0"},  # = an evaluated input
        {"instruction": SEEN_INSTR, "input": "aaaa", "output": "aaaa", "source": "t:1"},
        {"instruction": "repeat  THE input", "input": "bbbb", "output": "bbbb", "source": "t:2"},  # same, normalised
        {"instruction": SEEN_INSTR, "input": "aaaa", "output": "aaaa", "source": "t:3"},  # duplicate input
        {"instruction": "Something else", "input": "cccc", "output": "c", "source": "t:4"},
    ],
    "val_seen": [
        {"instruction": SEEN_INSTR, "input": "xxxx", "output": "xxxx", "source": "s:0"},
        {"instruction": SEEN_INSTR, "input": "yyyy", "output": "yyyy", "source": "s:1"},
        {"instruction": SEEN_INSTR, "input": "wwww", "output": "wwww", "source": "s:2"},
    ],
    "val_unseen": [
        {"instruction": "Say hello", "input": "zzzz", "output": "hello", "source": "u:0"},
        {"instruction": "Count to three", "input": "", "output": "one two", "source": "u:1"},
        {"instruction": "Name a color", "input": "", "output": "red", "source": "u:2"},
    ],
    "val_human": [{"instruction": "Write a word", "input": "", "output": None, "source": "h:0"}],
}
# greedy teacher, equal lengths and batches: one compiled generator serves self-study, teacher and evaluation
SPEC = gl.LoraEvalSpec(ranks=(2, 4), steps=2, num_queries=2, max_response_tokens=6, topk=8, self_study_tokens=6,
                       gen_batch=2, batch_size=2, max_length=96, teacher_temperature=0.0, teacher_top_p=1.0)
SPEC1 = dataclasses.replace(SPEC, ranks=(2,))  # the real end-to-end run: one rank (each rank compiles a step)
SAMPLED = ["zzzz", " ZZZZ ", "", "qqqq", "qqqq", "rrrr", "ssss"]  # what the patched self-study "samples"


@pytest.fixture(scope="module")
def tok():
    return Tok(101)


def _model(tiny_llama):
    cfg, params = tiny_llama
    return cfg, params, types.SimpleNamespace(id="tiny", content_hash="sha256:tiny")


@pytest.fixture(scope="module")
def result(tiny_llama, tok):
    """One real evaluation (seen + unseen, rank 2, baselines), counting teacher builds; self-study patched."""
    mp = pytest.MonkeyPatch()
    calls = []
    real = gl.build_teacher

    def counting(*a, **k):
        calls.append(a[3].text)
        return real(*a, **k)

    mp.setattr(gl, "build_teacher", counting)
    mp.setattr(gl, "_sample_texts", lambda *a, **k: list(SAMPLED))
    try:
        res = gl.evaluate_lora(
            SPEC1, model=_model(tiny_llama), tokenizer=tok, data_splits=SPLITS, splits=("seen", "unseen"),
            num_instructions=2, examples_per_instruction=2, max_new_tokens=6, batch_size=2, baselines=True,
            pos_outputs={"unseen": {("Say hello", "zzzz"): "hello there"}}, log=lambda s: None,
        )
    finally:
        mp.undo()
    return res, calls


def test_training_queries_never_include_the_evaluated_input(result):
    res, _ = result
    for d in res["details"].values():
        for inst in d["instructions"]:
            evaluated = {" ".join(e["input"].lower().split()) for e in inst["examples"]}
            if evaluated == {""}:  # an instruction-only request: the empty message is its one query
                assert set(inst["queries"]) == {""} and inst["query_sources"] == {"empty_input": SPEC.num_queries}
                continue
            assert not {" ".join(q.lower().split()) for q in inst["queries"]} & evaluated
    seen = res["details"]["seen"]["instructions"]
    assert len(seen) == 1 and [e["input"] for e in seen[0]["examples"]] == ["xxxx", "yyyy"]
    # seen task: other train inputs of the same (normalised) instruction, the evaluated "xxxx" skipped
    assert seen[0]["queries"] == ["aaaa", "bbbb"] and seen[0]["query_sources"] == {"train": 2, "self_study": 0}
    unseen = res["details"]["unseen"]["instructions"]
    # unseen: self-study inputs; "zzzz" (the evaluated input, any case / spacing) and duplicates dropped
    assert unseen[0]["queries"] == ["qqqq", "rrrr"] and unseen[0]["query_sources"] == {"train": 0, "self_study": 2}


def test_pick_and_training_queries_directly():
    instr = gl.Instruction(SEEN_INSTR, [SPLITS["val_seen"][0]])
    train = gl.train_inputs_by_instruction(SPLITS["train"])
    q, src = gl.training_queries(instr, train, 4, self_study=lambda n, exclude, taken: ["XXXX", "aaaa", "dddd"])
    assert q == ["aaaa", "bbbb", "dddd"] and src == {"train": 2, "self_study": 1}
    assert gl.pick_queries(["a b", "A  B", "c", ""], 5, {"c"}) == ["a b"]
    assert gl.pick_queries(["long one", "ok"], 5, set(), keep=lambda s: len(s) < 4) == ["ok"]
    assert gl.first_input_line('For example:\n\nInput: "What is 2+2?"\nmore') == "What is 2+2?"
    assert gl.first_input_line("Here is an example input:") == ""


def test_an_instruction_with_empty_inputs_trains_on_the_empty_input():
    """ShareGPT / MT-Bench records have input "": the empty message is the instruction's one query."""
    instr = gl.Instruction("Write a haiku about rain", [{"instruction": "Write a haiku about rain", "input": ""}])
    never = lambda n, exclude, taken: pytest.fail("no self-study for an empty-input instruction")  # noqa: E731
    q, src = gl.instruction_queries(instr, {}, SPEC, self_study=never)
    assert q == [""] * SPEC.num_queries and src == {"empty_input": SPEC.num_queries}
    off = dataclasses.replace(SPEC, empty_input_query=False)
    q, src = gl.instruction_queries(instr, {}, off, self_study=lambda n, exclude, taken: ["a haiku please"])
    assert q == ["a haiku please"] and src == {"train": 0, "self_study": 1}


def test_self_study_with_the_model(tiny_llama, tok, monkeypatch):
    cfg, params = tiny_llama
    monkeypatch.setattr(gl, "SELF_STUDY_ASK", "Inputs for: {instruction}")
    out = gl.self_study_inputs(params, cfg, tok, "Say hello", 3, exclude={"zzzz"}, spec=SPEC, seed=1)
    assert 1 <= len(out) <= 3 and all(isinstance(s, str) and len(s) >= 4 and s != "zzzz" for s in out)
    assert not set(gl.self_study_inputs(params, cfg, tok, "Say hello", 3, exclude=set(out), spec=SPEC)) & set(out)
    assert len(set(out)) == len(out)


def test_end_to_end_table(result, tiny_llama):
    res, calls = result
    cfg = tiny_llama[0]
    assert calls == [SEEN_INSTR, "Say hello", "Count to three"]  # one teacher per instruction
    table = res["eval"]
    assert set(table) == {"seen", "unseen"}
    for split, conds in table.items():
        assert set(conds) == {"lora_r2", "lora_teacher", "lora_r0"}
        for m in conds.values():
            assert {"rougeL", "rougeL_vs_pos", "n", "n_ref", "loss"} <= set(m)
            assert m["n"] == m["n_ref"] == 2 and np.isfinite(m["loss"]) and m["loss"] > 0
        m = conds["lora_r2"]
        assert m["bytes"] == G.lora_bytes(cfg, 2) and m["rank"] == 2 and m["alpha"] == 4
        assert m["steps"] == 2 and np.isfinite(m["final_train_loss"]) and m["s_per_instruction"] > 0
        for inst in res["details"][split]["instructions"]:
            assert inst["ranks"]["lora_r2"]["bytes"] == m["bytes"]  # the trained tree's own size
            assert len(inst["ranks"]["lora_r2"]["loss_curve"]) == 2
        assert conds["lora_teacher"]["rougeL_vs_teacher"] == 100.0 and conds["lora_r0"]["bytes"] == 0
    assert table["seen"]["lora_r2"]["n_instructions"] == 1 and table["unseen"]["lora_r2"]["n_instructions"] == 2
    assert table["unseen"]["lora_r2"]["n_pos"] == 1 and table["unseen"]["lora_r2"]["rougeL_vs_pos"] is not None
    assert table["seen"]["lora_r2"]["n_pos"] == 0 and table["seen"]["lora_r2"]["rougeL_vs_pos"] is None
    text = gl.format_table(table).splitlines()
    assert text[0].split()[:3] == ["split", "condition", "n"] and len(text) == 1 + 2 * 3


def test_ranks_share_one_teacher(result, tiny_llama, tok, monkeypatch):
    """Every rank of an instruction trains on the one TeacherData built for it (training stubbed: no compiles)."""
    built, trained = [], []
    real = gl.build_teacher

    def counting(*a, **k):
        built.append(real(*a, **k))
        return built[-1]

    def fake_train(params, cfg, teacher, spec, rank, seed=0, init=None):
        trained.append((teacher, rank))
        return gl.slice_lora(init, rank), [1.0, 0.5]

    monkeypatch.setattr(gl, "build_teacher", counting)
    monkeypatch.setattr(gl, "train_lora", fake_train)
    monkeypatch.setattr(gl, "_sample_texts", lambda *a, **k: list(SAMPLED))
    spec = dataclasses.replace(SPEC, ranks=(1, 2))  # largest rank 2: the fixture's init shapes, no new compile
    res = gl.evaluate_lora(spec, model=_model(tiny_llama), tokenizer=tok, data_splits=SPLITS, splits=("unseen",),
                           num_instructions=2, max_new_tokens=6, batch_size=2, baselines=False, log=lambda s: None)
    assert len(built) == 2  # one per instruction, not one per rank
    assert [(id(t), r) for t, r in trained] == [(id(b), r) for b in built for r in (1, 2)]
    conds = res["eval"]["unseen"]
    assert set(conds) == {"lora_r1", "lora_r2"}
    for r in (1, 2):
        assert conds[f"lora_r{r}"]["bytes"] == G.lora_bytes(tiny_llama[0], r) and conds[f"lora_r{r}"]["n"] == 2
        assert conds[f"lora_r{r}"]["rougeL_vs_teacher"] is None  # no baselines: no teacher outputs
    # nested init: rank 1 starts from the first component of rank 2's
    init = gl.nested_init(tiny_llama[1], tiny_llama[0], spec)
    a2 = init["model"]["layers"]["self_attn"]["q_proj"]["lora_A"]
    assert a2.shape[1] == 2 and np.abs(a2).max() > 0
    np.testing.assert_array_equal(gl.slice_lora(init, 1)["model"]["layers"]["self_attn"]["q_proj"]["lora_A"], a2[:, :1])


def test_prompts_teacher_has_instruction_student_input_only(tok):
    chat = gl.chat_pieces(tok)
    rec = {"instruction": "Say hi", "input": "to Bob", "output": "hi Bob"}
    p = gl.prompt_ids(rec, tok, fmt="chatml", chat=chat, gist_id=101, max_length=96)
    assert p.teacher == tuple(tok(chat.head + "Say hi\nto Bob" + chat.mid)["input_ids"])  # char-level: concatenative
    assert p.student == tuple(tok(chat.head + "to Bob" + chat.mid)["input_ids"])
    assert p.completion == tuple(tok("hi Bob" + chat.tail)["input_ids"])
    # the gist runs' pos_control prompt is the teacher's with k gist ids spliced in after the instruction
    ex, _ = G.encode_records([rec], tok, G.GistSpec(max_length=96), 101, with_completion=False)
    assert tuple(t for t in ex[0].prompt if t != 101) == p.teacher


def test_add_to_eval_json_keeps_other_entries(tmp_path):
    path = tmp_path / "eval.json"
    old = {"unseen": {"pos_control": {"rougeL": 40.0, "n": 100}, "lora_r2": {"n": 1}}, "human": {"gist_1": {"n": 80}}}
    path.write_text(json.dumps(old))
    path.chmod(0o644)
    new = {"unseen": {"lora_r2": {"n": 5}, "lora_r8": {"n": 5}}, "seen": {"lora_r2": {"n": 8}}}
    merged = gl.add_to_eval_json(path, new)
    assert json.loads(path.read_text()) == merged
    assert merged["unseen"]["pos_control"] == old["unseen"]["pos_control"] and merged["human"] == old["human"]
    assert merged["unseen"]["lora_r2"] == {"n": 5} and merged["seen"] == {"lora_r2": {"n": 8}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json"]  # no temp file left behind
    assert path.stat().st_mode & 0o777 == 0o644  # the replaced file keeps its mode
    fresh = tmp_path / "new" / "eval.json"
    assert gl.add_to_eval_json(fresh, {"unseen": {"lora_r2": {"n": 1}}}) == json.loads(fresh.read_text())
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(gl.GistLoraError, match="not an eval table"):
        gl.add_to_eval_json(bad, {"unseen": {}})
    assert bad.read_text() == "[1, 2]"
    details = gl.details_path(path)
    gl.write_details(details, {"seen": {"instructions": [1]}})
    gl.write_details(details, {"unseen": {"instructions": [2]}})
    assert set(json.loads(details.read_text())) == {"seen", "unseen"}


def test_pos_outputs_from_samples(tmp_path):
    samples = {"unseen": [{"instruction": "a", "input": "", "reference": "r", "pos_control": "p", "gist_1": "g"}],
               "human": [{"instruction": "b", "input": "", "reference": None, "gist_1": "g"}]}
    path = tmp_path / "eval_samples.json"
    path.write_text(json.dumps(samples))
    assert gl.pos_outputs_from_samples(path) == {"unseen": {("a", ""): "p"}}
    with pytest.raises(gl.GistLoraError, match="does not exist"):
        gl.pos_outputs_from_samples(tmp_path / "missing.json")


def test_group_instructions():
    recs = [{"instruction": i, "input": str(j)} for j, i in enumerate(["A", "b", "a ", "c", "A", "d"])]
    groups = gl.group_instructions(recs, 2, 2)
    assert [g.text for g in groups] == ["A", "b"] and [len(g.records) for g in groups] == [2, 1]


def test_bad_rank_and_empty_split_are_clear_errors(tiny_llama, tok):
    for bad in ((0,), (2, 2), (-1,), ("8",), (), (2.5,)):
        with pytest.raises(gl.GistLoraError, match="rank"):
            gl.LoraEvalSpec(ranks=bad)
    assert gl.parse_ranks("2, 8,16") == (2, 8, 16) and gl.parse_ranks(["4"]) == (4,)
    for bad in ("2,x", "0", ""):
        with pytest.raises(gl.GistLoraError, match="rank"):
            gl.parse_ranks(bad)
    kw = {"model": _model(tiny_llama), "tokenizer": tok, "log": lambda s: None}
    with pytest.raises(gl.GistLoraError, match="larger than the model's hidden size"):
        gl.evaluate_lora(gl.LoraEvalSpec(ranks=(2, 128)), data_splits=SPLITS, **kw)
    with pytest.raises(gl.GistLoraError, match=r"split 'unseen' \(val_unseen\) is empty"):
        gl.evaluate_lora(SPEC, data_splits=dict(SPLITS, val_unseen=[]), splits=("unseen",), **kw)
    with pytest.raises(gl.GistLoraError, match="unknown split"):
        gl.evaluate_lora(SPEC, data_splits=SPLITS, splits=("valid",), **kw)
    with pytest.raises(gl.GistLoraError, match="num_instructions must be >= 1"):
        gl.evaluate_lora(SPEC, data_splits=SPLITS, num_instructions=0, **kw)
    assert issubclass(gl.GistLoraError, G.GistError)  # the launchers' `except GistError` catches it
