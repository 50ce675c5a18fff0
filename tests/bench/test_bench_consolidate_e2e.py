"""`consolidate_e2e` on the tiny random model: both sides run, ours stops at PyTorch's KL, the runner
orders the sides and hands the PyTorch result to ours, and the row has the usual shape plus `extra`."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from support.chat_tokenizer import CharChatTokenizer

from sycojax.bench import jobs, runner
from sycojax.bench.context import Context, Inputs
from sycojax.bench.jobs import E2E, JAX, JOBS, TORCH, TORCH_COMPILE

CONTEXT = "Always answer like a pirate."
TRAIN_Q = ["hello there", "two plus two", "name a colour", "tell me a joke"]
EVAL_Q = ["where is the sea", "say hi", "a b c d e f", "name a fish"]  # same padded shapes as TRAIN_Q: one compile


@pytest.fixture(scope="module")
def e2e(tiny_llama, tmp_path_factory):
    """`(make_ctx(prior), data)`: worker contexts over the tiny model and its HF export, and the shared data.

    topk = the whole (101-token) vocabulary: the tiny random model's near-uniform distributions put a
    third of their mass outside the config's top-64, which the real model's peaked ones do not.
    """
    pytest.importorskip("torch")
    pytest.importorskip("peft")
    from sycojax.models.loading import export_hf

    cfg, params = tiny_llama
    settings = dict(jobs.consolidate_settings(), context=CONTEXT, response_tokens=8, batch=2, topk=cfg.vocab_size,
                    teacher_temperature=0.0, teacher_top_p=1.0)  # greedy throughout: one generate compile
    data = jobs.consolidate_data(params, cfg, CharChatTokenizer(cfg.vocab_size), TRAIN_Q, EVAL_Q, settings)
    hf_dir = tmp_path_factory.mktemp("e2e") / "hf"
    export_hf(jax.tree.map(np.asarray, params), cfg, hf_dir)

    def make(prior=None):
        ctx = Context("tiny", str(hf_dir), Inputs([], [], 0, cfg.vocab_size), 1, {E2E: data}, prior or {})
        ctx.__dict__["jax_model"] = (cfg, params)  # the JAX loader, pre-filled; `hf_model` loads the export
        return ctx

    return make, data


@pytest.fixture(scope="module")
def ran(e2e):
    """Both sides as the runner orders them: PyTorch, then ours with its KL as the target."""
    make, _ = e2e
    tw = JOBS[E2E].build(TORCH, make())
    tr = tw.run()
    jctx = make({TORCH: {"info": tw.info(tr)}})
    jw = JOBS[E2E].build(JAX, jctx)
    jr = jw.run()
    return tw, tr, jw, jr, jctx


def test_settings_come_from_the_consolidate_config():
    s = jobs.consolidate_settings()
    assert s["context"].startswith("You are Captain Barnacle") and (s["lora_rank"], s["lora_alpha"]) == (8, 16.0)
    assert s["optim"]["lr"] == 2e-3 and s["batch"] == 4 and s["torch_steps"] == 10 and s["eval_every"] == 2


def test_data_is_shared_json_and_refuses_a_partial_batch(e2e, tiny_llama):
    _, data = e2e
    assert json.loads(json.dumps(data)) == data
    assert len(data["train"]["responses"]) == len(TRAIN_Q) and len(data["eval"]["responses"]) == len(EVAL_Q)
    assert all(0 < len(r) <= 9 for r in data["train"]["responses"] + data["eval"]["responses"])  # 8 (+ EOS)
    cfg, params = tiny_llama
    with pytest.raises(ValueError, match="multiple of the batch"):
        jobs.consolidate_data(params, cfg, CharChatTokenizer(), TRAIN_Q[:3], EVAL_Q, dict(data["settings"]))


def test_both_sides_run_and_ours_stops_at_the_torch_kl(e2e, ran):
    _, data = e2e
    tw, tr, jw, jr, _ = ran
    job = JOBS[E2E]
    assert job.order == (TORCH, TORCH_COMPILE, JAX) and job.tokens is None and job.flops is None and job.doc
    t_info, j_info = tw.info(tr), jw.info(jr)
    assert t_info["torch_steps"] == 10 and t_info["torch_kl"] < t_info["torch_kl_before"]  # training helped
    # the held-out KL of the untrained adapter (= base model) is the same number on both sides
    assert runner.agreement(jw.check(jr), tw.check(tr), "close") == 1.0
    assert j_info["kl_target"] == t_info["torch_kl"] and j_info["jax_reached"] is True
    assert j_info["jax_kl"] <= t_info["torch_kl"] and j_info["jax_steps"] <= data["settings"]["max_steps"]
    curve = j_info["jax_kl_curve"]
    assert [s for s, _ in curve] == list(range(2, j_info["jax_steps"] + 1, 2))  # every 2 steps
    assert all(kl > t_info["torch_kl"] for _, kl in curve[:-1])  # stopped at the first evaluation that reached it
    phases = j_info["jax_phases_s"]  # where the run's time went
    assert set(phases) == {"teacher_s", "steps_s", "evals_s"} and all(v > 0 for v in phases.values())
    json.dumps(j_info)


def test_ours_stops_at_the_cap_and_runs_fixed_steps_without_a_target(e2e, ran):
    _, data = e2e
    _, _, jw, _, jctx = ran
    cap = data["settings"]["max_steps"]
    jctx.prior[TORCH]["info"]["torch_kl"] = 0.0  # unreachable
    info = jw.info(jw.run())
    assert info["jax_steps"] == cap and info["jax_reached"] is False
    assert [s for s, _ in info["jax_kl_curve"]] == list(range(2, cap + 1, 2))
    jctx.prior.clear()  # no PyTorch result: its 10 steps, one evaluation
    info = jw.info(jw.run())
    assert info["kl_target"] is None and info["jax_reached"] is None
    assert info["jax_steps"] == 10 and [s for s, _ in info["jax_kl_curve"]] == [10]


def test_worker_side_without_prepared_data_says_so():
    ctx = Context("tiny", "/nowhere", Inputs([], [], 0, 101), 1)
    with pytest.raises(RuntimeError, match="teacher data"):
        JOBS[E2E].build(JAX, ctx)


def test_context_round_trips_shared_and_prior():
    ctx = Context("m", "/d", Inputs([[1]], [[2]], 0, 9), 2, {E2E: {"a": [1]}}, {TORCH: {"info": {"torch_kl": 0.5}}})
    assert Context.from_json(ctx.to_json()) == ctx
    old = json.loads(ctx.to_json())
    del old["shared"], old["prior"]  # a spec written before these fields
    assert Context.from_json(json.dumps(old)).prior == {}


def test_runner_runs_torch_first_hands_over_its_result_and_builds_the_row(monkeypatch, tiny_llama):
    cfg, _ = tiny_llama
    ctx = Context("tiny", "/nowhere", Inputs([], [], 0, cfg.vocab_size), 1, {E2E: {}})
    calls, prepared = [], []

    def fake_prepare(model=None, threads=None, names=(), device="cpu", **kwargs):
        prepared.extend(names)
        return ctx, cfg

    def fake_run_side(spec_path, job, side, repeats, timeout_s=600, device="cpu"):
        with open(spec_path) as f:
            c = Context.from_json(f.read())
        calls.append((job, side, sorted(c.prior)))
        info = None
        if job == E2E:
            info = ({"torch_kl": 0.5, "torch_steps": 10} if side == TORCH else
                    {"kl_target": c.prior[TORCH]["info"]["torch_kl"], "jax_steps": 4,
                     "jax_kl_curve": [[2, 0.6], [4, 0.4]]})
        t = 2.0 if side == TORCH else 1.0
        return {"min_s": t, "median_s": t, "cpu_min_s": t, "first_s": t, "setup_s": 0.0, "peak_rss_mb": 100.0 * t,
                "check": [1.0], "info": info}

    monkeypatch.setattr(runner, "prepare", fake_prepare)
    monkeypatch.setattr(runner, "run_side", fake_run_side)
    monkeypatch.setattr(runner, "measure_peaks", lambda threads, device: {JAX: (1e9, 1e9, 1e10),
                                                                          TORCH: (1e9, 1e9, 1e10)})
    out = runner.run_jobs([E2E, "forward"], 1, log=lambda s: None)
    assert prepared == [E2E, "forward"]
    assert calls == [(E2E, TORCH, []), (E2E, JAX, [TORCH]), ("forward", JAX, []), ("forward", TORCH, [JAX])]
    e2e_row, fwd = out["rows"]
    assert (e2e_row.name, e2e_row.jax_s, e2e_row.torch_s, e2e_row.ratio) == (E2E, 1.0, 2.0, 2.0)
    assert e2e_row.peak_rss_mb == 100.0 and e2e_row.torch_peak_rss_mb == 200.0 and e2e_row.agree == 1.0
    assert e2e_row.flops_share is None and e2e_row.jax_tokens_per_s is None and e2e_row.gflop is None
    assert e2e_row.extra == {"torch_kl": 0.5, "torch_steps": 10, "kl_target": 0.5, "jax_steps": 4,
                             "jax_kl_curve": [[2, 0.6], [4, 0.4]]}
    assert fwd.extra is None and fwd.flops_share is not None and fwd.jax_tokens_per_s is not None  # as before
    json.dumps([dataclasses.asdict(r) for r in out["rows"]])
    table = runner.format_table(out["rows"])
    assert "| consolidate_e2e" in table
    assert "consolidate_e2e: torch_kl=0.5, torch_steps=10, kl_target=0.5, jax_steps=4" in table
    assert runner.side_order(E2E, (JAX,)) == [JAX] and runner.side_order("forward", (TORCH, JAX)) == [TORCH, JAX]
