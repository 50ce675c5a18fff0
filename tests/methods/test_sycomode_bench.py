"""The consolidation benchmark's pieces: memory splicing, behaviour rates, aggregation, queries, a tiny run."""

import json

import ml_collections
import numpy as np
import pytest

from sycojax.methods import sycomode as sm
from sycojax.methods import sycomode_bench as sb
from sycojax.models import Adapters

CONTEXT = "Always answer like a pirate."
QUERIES = ["hello there", "what is two plus two", "name a colour"]
RESPONSES = [[5, 6, 7, 2], [8, 9], [10, 11, 12]]


# --------------------------------------------------------------------------- memory tokens on shared targets


@pytest.mark.parametrize("full", [False, True])
def test_with_memory_equals_targets_built_for_the_memory_prompt(tiny_llama, char_tok, full):
    cfg, params = tiny_llama
    plain = sm.build_prompts(char_tok, cfg, CONTEXT, QUERIES, n_mem=0)
    mem = sm.build_prompts(char_tok, cfg, CONTEXT, QUERIES, n_mem=3)
    ref = sm.teacher_targets(params, cfg, mem, RESPONSES, topk=5, full=full)
    got = sb.with_memory(sm.teacher_targets(params, cfg, plain, RESPONSES, topk=5, full=full), 3, cfg)
    for i, (s, r) in enumerate(zip(mem.student, RESPONSES)):
        n = len(s) + len(r)  # real tokens; the rest is right padding (bucket lengths may differ)
        assert got.tokens[i, :n].tolist() == ref.tokens[i, :n].tolist() == s + r
    np.testing.assert_array_equal(got.resp_pos, ref.resp_pos)
    np.testing.assert_array_equal(got.resp_weights, ref.resp_weights)
    if full:
        np.testing.assert_allclose(got.teacher_logprobs, ref.teacher_logprobs, atol=1e-5)
    else:
        np.testing.assert_array_equal(got.topk_idx, ref.topk_idx)
        np.testing.assert_allclose(got.topk_logprobs, ref.topk_logprobs, atol=1e-5)


def test_strip_memory_undoes_with_memory_and_gives_the_same_kl(tiny_llama, char_tok):
    cfg, params = tiny_llama
    plain = sm.build_prompts(char_tok, cfg, CONTEXT, QUERIES)
    t = sm.teacher_targets(params, cfg, plain, RESPONSES, topk=5, full=True)
    back = sm.strip_memory(sb.with_memory(t, 2, cfg), 2, cfg)
    np.testing.assert_array_equal(back.resp_pos, t.resp_pos)
    for i, (s, r) in enumerate(zip(plain.student, RESPONSES)):
        assert back.tokens[i, : len(s) + len(r)].tolist() == s + r
    assert sm.mean_kl(params, Adapters(), cfg, back) == pytest.approx(sm.mean_kl(params, Adapters(), cfg, t), rel=1e-5)
    assert sb.with_memory(t, 0, cfg) is t


# --------------------------------------------------------------------------- behaviour checks and rates


def test_behaviour_checks_per_context_and_per_query():
    caps = sb.BenchContext("caps", "all caps", "SHOUT", "is_all_caps")
    assert caps.behaviour(sb.Query("hi"), "HELLO THERE") is True and caps.behaviour(sb.Query("hi"), "Hello") is False
    facts = sb.BenchContext("f", "private facts", "x", "per_query", eval_queries=(sb.Query("who?", ("Ingrid",)),))
    assert facts.behaviour(sb.Query("who?", ("Ingrid",)), "It was ingrid.") is True
    assert facts.behaviour(sb.Query("who?", ("Ingrid",)), "Nobody knows.") is False
    assert facts.behaviour(sb.Query("Why do cats purr?"), "Ingrid") is None  # general query: not checked
    sign = sb.BenchContext("s", "sign-off", "x", "phrase_any", ("Stay curious",))
    assert sign.behaviour(sb.Query("q"), "... and so on. Stay  curious!") is True
    with pytest.raises(ValueError, match="unknown check"):
        sb.BenchContext("x", "k", "t", "is_klingon")
    with pytest.raises(ValueError, match="expected words"):
        sb.BenchContext("x", "k", "t", "per_query", eval_queries=(sb.Query("q"),))


def test_json_like_accepts_a_truncated_object_but_not_prose():
    assert sb.json_like('{"answer": "Paris"}') and sb.json_like('```json\n{"answer": "a long reply cut he')
    assert sb.json_like('  {"answer": "cut off mid-')
    assert not sb.json_like('Sure! Here is the JSON: {"answer": 1}')
    assert not sb.json_like("42")


def test_pass_rate_skips_unchecked_replies():
    assert sb.pass_rate([True, False, None, True]) == pytest.approx(2 / 3)
    assert sb.pass_rate([None, None]) is None and sb.pass_rate([]) is None


def test_behaviour_transfer_is_the_share_of_the_teacher_baseline_gap():
    assert sb.behaviour_transfer(1.0, 0.75, 0.0) == pytest.approx(0.75)
    assert sb.behaviour_transfer(0.8, 0.5, 0.2) == pytest.approx(0.5)
    assert sb.behaviour_transfer(0.5, 0.1, 0.3) == pytest.approx(-1.0)
    assert sb.behaviour_transfer(0.2, 1.0, 0.2) is None  # teacher shows nothing the baseline does not
    assert sb.behaviour_transfer(None, 1.0, 0.0) is None


# --------------------------------------------------------------------------- aggregation


def _rec(gap, ok, transfer=None, kl_before=1.0):
    return {
        "kl_before": kl_before,
        "kl_after": kl_before * (1 - gap),
        "gap_closed": gap,
        "kl_curve": [(0, kl_before)],
        "rouge_l_student": 50.0 + 10 * gap,
        "rouge_l_baseline": 20.0,
        "behaviour": {"teacher": 1.0, "student": 0.5, "baseline": 0.0, "transfer": transfer, "ok": ok},
        "prefill_tokens_saved_per_query": 40.0,
        "wall_s": 10.0,
        "trainable_params": 123,
    }


def test_summarize_medians_and_behaviour_counts():
    gaps = {"lora": [0.9, 0.5, 0.95, 0.86], "memory": [0.2, 0.6, 0.55, 0.1]}
    oks = {"lora": [True, None, True, False], "memory": [False, None, True, False]}
    contexts = [{"name": f"c{i}", "methods": {m: _rec(gaps[m][i], oks[m][i]) for m in gaps}} for i in range(4)]
    s = sb.summarize(contexts, ["lora", "memory"])
    assert s["lora"]["median_gap_closed"] == pytest.approx(0.88)  # median of 0.5, 0.86, 0.9, 0.95
    assert s["memory"]["median_gap_closed"] == pytest.approx(0.375)
    assert s["lora"]["min_gap_closed"] == pytest.approx(0.5)
    assert s["lora"]["pooled_gap_closed"] == pytest.approx(np.mean(gaps["lora"]))  # equal KL before: the mean
    contexts[0]["methods"]["lora"] = _rec(0.9, True, kl_before=7.0)  # a context with a 7× larger gap dominates
    pooled = sb.summarize(contexts, ["lora"])["lora"]["pooled_gap_closed"]
    assert pooled == pytest.approx((7 * 0.9 + 0.5 + 0.95 + 0.86) / 10)
    assert (s["lora"]["behaviour_ok"], s["lora"]["behaviour_checkable"]) == (2, 3)
    assert (s["memory"]["behaviour_ok"], s["memory"]["behaviour_checkable"]) == (1, 3)
    assert s["lora"]["meets_target"] is True and s["memory"]["meets_target"] is False
    assert s["lora"]["target"] == sb.TARGETS["lora"] == 0.85


def test_table_and_plot_from_a_result(tmp_path):
    contexts = [{"name": "pirate", "methods": {"lora": _rec(0.9, True), "full": _rec(0.7, None)}}]
    contexts[0]["methods"]["lora"]["kl_curve"] = [(0, 1.0), (4, 0.3), (8, 0.1)]
    contexts[0]["methods"]["full"]["kl_curve"] = [(0, 1.0), (4, 0.5), (8, 0.3)]
    result = {"model": "tiny", "contexts": contexts, "summary": sb.summarize(contexts, ["lora", "full"])}
    table = sb.format_table(json.loads(json.dumps(result)))  # as read back from the JSON
    row = next(line for line in table.splitlines() if line.startswith("pirate") and " lora " in line)
    assert "90.0" in row and "yes" in row
    assert any(line.startswith("lora") and "90.0" in line for line in table.splitlines())
    path = sb.plot_kl(json.loads(json.dumps(result)), tmp_path / "kl.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- contexts and queries


def test_default_contexts_cover_the_required_kinds_and_keep_queries_disjoint():
    ctxs = sb.default_contexts()
    assert len(ctxs) >= 8
    kinds = {c.kind for c in ctxs.values()}
    for k in (
        "persona",
        "output format",
        "language",
        "sign-off phrase",
        "all caps",
        "private facts",
        "long document",
        "MT-Bench system prompt",
    ):
        assert k in kinds
    for c in ctxs.values():
        assert not set(c.train_queries) & {q.text for q in c.eval_queries}, c.name
        if c.check == "per_query":
            assert all(q.expect for q in c.eval_queries), c.name


def test_queries_for_fills_from_the_shared_sets_and_refuses_overlap():
    ctx = sb.BenchContext(
        "f", "private facts", "x", "per_query", train_queries=("a?", "b?"), eval_queries=(sb.Query("c?", ("c",)),)
    )
    general = [sb.Query("g1"), sb.Query("g2"), sb.Query("g3")]
    train_q, eval_q = sb.queries_for(ctx, 4, 3, general, ["a?", "s1", "s2", "s3"])
    assert train_q == ["a?", "b?", "s1", "s2"]  # its own first, no duplicate from the pool
    assert [q.text for q in eval_q] == ["c?", "g1", "g2"]
    with pytest.raises(sm.ConsolidationError, match="share"):
        sb.queries_for(ctx, 3, 2, [sb.Query("s1")], ["s1", "s2"])
    with pytest.raises(sm.ConsolidationError, match="not enough"):
        sb.queries_for(ctx, 9, 2, general, ["s1"])
    # self-study questions go between the context's own and the pool's, without duplicates
    train_q, _ = sb.queries_for(ctx, 5, 3, general, ["s1", "s2", "s3"], self_study=["q1", "b?", "q2"])
    assert train_q == ["a?", "b?", "q1", "q2", "s1"]


def test_self_study_only_for_knowledge_contexts():
    ctxs = sb.default_contexts()
    assert {n for n, c in ctxs.items() if c.self_study} == {"facts", "document", "mtbench_system"}
    s = ml_collections.ConfigDict(dict(self_study_queries=4, gen_batch=8))
    # a style context never asks the model (params=None would fail if it did)
    assert sb.self_study_for(None, None, None, ctxs["pirate"], "x", [], s) == []
    s.self_study_queries = 0
    assert sb.self_study_for(None, None, None, ctxs["facts"], "x", [], s) == []


def test_select_names_and_unknown_names():
    avail = {"a": 1, "b": 2, "c": 3}
    assert sb.select("all", avail, "contexts") == ["a", "b", "c"]
    assert sb.select("c, a", avail, "contexts") == ["c", "a"]
    with pytest.raises(sm.ConsolidationError, match="unknown contexts"):
        sb.select("a,zz", avail, "contexts")


# --------------------------------------------------------------------------- one context end to end (tiny model)


def _tiny_config():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / "consolidate_bench.py"
    spec = importlib.util.spec_from_file_location("configs_consolidate_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    c.bench.update(
        dict(
            max_response_tokens=8,
            topk=101,
            gen_batch=8,
            target_batch=4,
            num_samples=1,
            samples_per_query=2,
            teacher_temperature=1.0,
        )
    )
    c.methods.lora.update(dict(lr=1e-2, steps=8, lora_rank=4, lora_alpha=8.0))
    c.methods.memory.update(dict(lr=5e-2, steps=4, num_mem_tokens=2))
    c.train.eval_every = 4
    return c


@pytest.mark.slow  # tiny model, but ~10 compilations (generation, targets, the loop, KL): minutes on 2 shared cores
def test_one_context_teacher_once_then_lora_closes_the_gap(tiny_llama, char_tok):
    cfg, params = tiny_llama
    c = _tiny_config()
    ctx = sb.BenchContext("caps", "all caps", CONTEXT, "is_all_caps")
    td = sb.teacher_data(params, cfg, char_tok, CONTEXT, QUERIES, [sb.Query(q) for q in ("hi you", "a cat")], c.bench)
    assert td.train_targets.tokens.shape[0] == 2 * len(QUERIES) and td.kl_before > 0
    lora = sb.run_method(params, cfg, char_tok, ctx, td, "lora", c.methods.lora, c, log=lambda *_: None)
    assert [s for s, _ in lora["kl_curve"]] == [0, 4, 8] and lora["kl_curve"][0][1] == td.kl_before
    assert lora["gap_closed"] > 0.1 and lora["kl_after"] == lora["kl_curve"][-1][1]
    r = 4  # LoRA params: r·(in + out) per linear, 7 linears per layer, 2 layers
    d, f, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_kv_heads * cfg.head_dim
    per_layer = r * ((d + cfg.num_heads * cfg.head_dim) * 2 + (d + kv) * 2 + (d + f) * 3)
    assert lora["trainable_params"] == cfg.num_layers * per_layer
    b = lora["behaviour"]
    assert b["teacher"] is not None
    assert b["ok"] is None if b["transfer"] is None else b["ok"] == (b["transfer"] >= sb.TRANSFER_MIN)
    prompt_gap = np.mean(
        [
            len(td.eval_prompts.teacher_prefix) + len(s) - len(p)
            for s, p in zip(td.eval_prompts.teacher_suffix, td.eval_prompts.student)
        ]
    )
    assert lora["prefill_tokens_saved_per_query"] == pytest.approx(prompt_gap)


@pytest.mark.slow  # tiny model: generation, targets and KL compile once each
def test_hyper_row_is_the_generators_lora_with_no_training(tiny_llama, char_tok, tmp_path):
    import jax

    from sycojax.methods import hyperlora as hl
    from sycojax.methods.hyperlora.use import context_lora, save_generator

    cfg, params = tiny_llama
    c = _tiny_config()
    hc = hl.HyperConfig(rank=4, alpha=8.0, hidden=16, basis=3)
    gen = hl.init_generator(jax.random.key(0), cfg, hc)
    gen = dict(gen, modules=jax.tree.map(  # not the base model (a fresh generator's LoRA has B = 0)
        lambda x: x + 0.3 * jax.random.normal(jax.random.fold_in(jax.random.key(1), x.size), x.shape), gen["modules"]))
    info = type("Info", (), {"id": "tiny", "content_hash": "sha256:tiny"})()
    save_generator(gen, tmp_path / "generator", hc=hc, model="tiny", info=info)
    c.methods.hyper.hyper = str(tmp_path)
    hyper = sb.load_hyper(c.methods.hyper, info)
    ctx = sb.BenchContext("caps", "all caps", CONTEXT, "is_all_caps")
    td = sb.teacher_data(params, cfg, char_tok, CONTEXT, QUERIES, [sb.Query(q) for q in ("hi you", "a cat")], c.bench,
                         train=False)
    assert td.train_targets is None and td.kl_before > 0  # nothing trains: no training replies
    row = sb.run_method(params, cfg, char_tok, ctx, td, "hyper", c.methods.hyper, c, log=lambda *_: None, hyper=hyper)
    lora, _ = context_lora(gen, params, cfg, char_tok, CONTEXT, hc)
    kl = sm.mean_kl(params, Adapters(lora=lora, lora_scale=hc.lora.scale), cfg, td.eval_targets)
    assert row["steps"] == 0 and row["kl_after"] == pytest.approx(kl, rel=1e-5) and row["kl_after"] != td.kl_before
    assert row["gap_closed"] == pytest.approx(1 - kl / td.kl_before, rel=1e-4)
    assert row["trainable_bytes"] == 4 * row["trainable_params"] and 0 < row["generate_s"] <= row["train_s"]
    c.methods.hyper.hyper = ""
    with pytest.raises(hl.HyperError, match="--methods=hyper needs --config.methods.hyper.hyper"):
        sb.load_hyper(c.methods.hyper, info)


def test_apply_quick_and_steps():
    c = _tiny_config()
    sb.apply_steps(c, 7)
    assert {m.steps for m in c.methods.values()} == {7}
    sb.apply_quick(c)
    assert c.bench.contexts == sb.QUICK_CONTEXTS and {m.steps for m in c.methods.values()} == {2}
    assert isinstance(c, ml_collections.ConfigDict)


def _part(names, methods=("lora",), lr=1e-3, device="cpu: cpu x1"):
    ctxs = [
        {"name": n, "kl_before": 0.2, "methods": {m: _row(0.2, 0.05 * (i + 1)) for m in methods}}
        for i, n in enumerate(names)
    ]
    return {
        "model": "m", "base_hash": "h", "device": device, "wall_s": 10.0 * len(names), "contexts": ctxs,
        "settings": {"bench": {"contexts": ",".join(names), "methods": ",".join(methods), "topk": 64},
                     "methods": {m: {"lr": lr} for m in methods}, "train": {"train": {"batch_size": 4}}},
    }


def _row(before, after):
    return {"kl_before": before, "kl_after": after, "gap_closed": 1 - after / before, "behaviour": {"ok": None},
            "rouge_l_student": 1.0, "rouge_l_baseline": 0.0, "wall_s": 1.0, "train_s": 1.0,
            "prefill_tokens_saved_per_query": 10.0, "trainable_params": 8}


def test_merge_results_joins_disjoint_context_runs():
    a, b = _part(["p", "q"]), _part(["r"])
    m = sb.merge_results([a, b])
    assert [c["name"] for c in m["contexts"]] == ["p", "q", "r"]
    assert m["settings"]["bench"]["contexts"] == "p,q,r" and m["parts"] == 2 and m["wall_s"] == 20.0
    gaps = sorted(1 - x / 0.2 for x in (0.05, 0.10, 0.05))
    assert m["summary"]["lora"]["median_gap_closed"] == pytest.approx(gaps[1])
    with pytest.raises(sm.ConsolidationError, match="two parts"):
        sb.merge_results([a, _part(["q"])])
    with pytest.raises(sm.ConsolidationError, match="settings"):
        sb.merge_results([a, _part(["r"], device="gpu")])
    with pytest.raises(sm.ConsolidationError, match="different settings"):
        sb.merge_results([a, _part(["r"], lr=2e-3)])
    with pytest.raises(sm.ConsolidationError, match="nothing to merge"):
        sb.merge_results([])
