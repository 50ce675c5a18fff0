import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sycojax.bench import flops
from sycojax.bench.hardware import jax_matmul_peak, jax_read_bandwidth, peak_rss_mb
from sycojax.bench.jobs import JOBS, job
from sycojax.bench.runner import Row, agreement, format_table
from sycojax.bench.timing import time_fn

REPO = Path(__file__).resolve().parents[2]


def test_time_fn_excludes_warmup_and_reports_min_median():
    calls = []
    t = time_fn(lambda: calls.append(1), repeats=4, warmup=2, sync=lambda x: x)
    assert len(calls) == 6 and len(t.times_s) == 4
    assert t.min_s <= t.median_s
    with pytest.raises(ValueError, match="repeats"):
        time_fn(lambda: None, repeats=0)


def test_forward_flops_formula(tiny_llama):
    cfg, _ = tiny_llama
    d, f = cfg.hidden_size, cfg.intermediate_size
    hq, hkv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    per_layer = d * hq + 2 * d * hkv + hq * d + 3 * d * f
    assert flops.linear_macs_per_token(cfg) == cfg.num_layers * per_layer
    b, t = 2, 5
    visible = t * (t + 1) // 2  # causal
    expect = b * (t * (2 * cfg.num_layers * per_layer + 2 * d * cfg.vocab_size)
                  + 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim * visible)
    assert flops.forward_flops(cfg, b, t) == expect


def test_generate_flops_equals_one_causal_pass(tiny_llama):
    """Prefill p tokens + (n-1) cached steps = one causal pass over p+n-1 tokens, with n logits rows."""
    cfg, _ = tiny_llama
    p, n = 7, 5
    one_pass = flops.forward_flops(cfg, 1, p + n - 1, logits=False) + n * 2 * cfg.hidden_size * cfg.vocab_size
    assert flops.generate_flops(cfg, [p], n) == pytest.approx(one_pass)
    assert flops.generate_flops(cfg, [p, p], n) == pytest.approx(2 * one_pass)


def test_generate_bytes(tiny_llama):
    """Weights once per forward call (the tied table whole, read by the head) + the K/V each new token sees."""
    cfg, _ = tiny_llama
    d, f, v, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_layers
    hq, hkv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    per_layer = d * hq + 2 * d * hkv + hq * d + 3 * d * f + 2 * d  # linears + two RMSNorm weights
    params = L * per_layer + d + v * d  # + final norm + embedding table (tied) or head (untied)
    assert flops.weight_bytes(cfg) == 4 * params
    p, n = 7, 5
    kv = sum(2 * L * hkv * 4 * (p + i) for i in range(1, n))
    assert flops.generate_bytes(cfg, [p], n) == n * 4 * params + kv
    assert flops.generate_bytes(cfg, [p, p], n) == n * 4 * params + 2 * kv  # one batch: weights read once


def test_train_flops(tiny_llama):
    cfg, _ = tiny_llama
    fwd = flops.forward_flops(cfg, 2, 8)
    assert flops.train_flops(cfg, 2, 8, base_trains=True) == 3 * fwd
    io = flops.lora_io_per_token(cfg)
    d, f = cfg.hidden_size, cfg.intermediate_size
    hq, hkv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    assert io == cfg.num_layers * ((hq + d) + 2 * (hkv + d) + (d + hq) + 2 * (f + d) + (d + f))
    assert flops.train_flops(cfg, 2, 8, base_trains=False, adapter_params=8 * io) == 2 * fwd + 6 * 8 * io * 16


def test_registry_has_the_issue_rows_and_refuses_duplicates():
    for name in ("forward", "generate_b1", "generate_b8", "lora_step", "memory_step", "full_step", "consolidate_e2e"):
        assert name in JOBS and JOBS[name].doc
    with pytest.raises(ValueError, match="registered twice"):
        job("forward", tokens=lambda i: 0, flops=lambda c, i: 0)(lambda side, ctx: None)


def test_agreement_and_table():
    assert agreement([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert agreement(None, [1]) is None
    assert agreement([1.0], [1.0005], "close") == 1.0
    assert agreement([1.0], [1.1], "close") == 0.0
    table = format_table([Row("forward", jax_s=1.0, torch_s=2.0, ratio=2.0, agree=1.0), Row("generate_b1")])
    lines = table.splitlines()
    assert len(lines) == 4 and "2.00x" in lines[2] and lines[3].count("-") >= 10
    gen = Row("generate_b1", jax_s=4.0, torch_s=6.0, gbytes=69.0, bw_floor_s=3.0, bw_share=0.75, torch_bw_share=0.5)
    table = format_table([gen])
    assert "| 75 " in table and "| 50 " in table and "fastest possible ratio vs PyTorch is 2.00x" in table


def test_matmul_peak_and_rss_are_measured():
    wall, per_cpu_s = jax_matmul_peak(sizes=(128,), repeats=2)
    assert wall > 1e8 and per_cpu_s > 1e8  # > 0.1 GFLOP/s on anything
    assert 10 < peak_rss_mb() < 1e6
    assert jax_read_bandwidth(nbytes=2**20, repeats=2) > 1e8  # > 0.1 GB/s on anything


@pytest.mark.slow
def test_bench_forward_jax_side_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch/bench.py"), "--jobs=forward", "--sides=jax", "--repeats=1",
         f"--json={out}"],
        capture_output=True, text=True, cwd=REPO, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    (row,) = rows
    assert row["name"] == "forward" and row["jax_s"] > 0 and row["torch_s"] is None
    assert 0 < row["flops_share"] < 2 and row["peak_rss_mb"] > 100 and row["jax_tokens_per_s"] > 0
    assert row["recompiles"] == 0 and row["first_call_s"]["jax"] > row["jax_s"]  # compiled once, in the warm-up
    assert row["peers"] is None and row["best_peer_ratio"] is None  # no peer was asked for
    assert "| forward" in proc.stdout


def test_device_switch_names_the_problem():
    import jax

    from sycojax.bench.context import Context, Inputs
    from sycojax.bench.hardware import device_peak_mb, jax_platform, setup_jax, setup_torch, torch_device
    from sycojax.bench.runner import run_jobs

    assert (jax_platform("cpu"), jax_platform("gpu")) == ("cpu", "cuda")
    assert (torch_device("cpu"), torch_device("gpu")) == ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu'; choose one of cpu, gpu"):
        jax_platform("tpu")
    with pytest.raises(ValueError, match="unknown device"):
        run_jobs(["forward"], 1, device="tpu")  # refused before anything is prepared
    assert device_peak_mb("jax", "cpu") is None
    ctx = Context("m", "/x", Inputs([[1]], [[1]], 0, 10), 2, device="gpu")
    assert Context.from_json(ctx.to_json()) == ctx
    old = json.loads(ctx.to_json())
    del old["device"]  # a spec written before the switch existed
    assert Context.from_json(json.dumps(old)).device == "cpu"
    if jax.default_backend() != "gpu":
        with pytest.raises(RuntimeError, match="install jax\\[cuda\\]"):
            setup_jax("gpu")
        assert jax.config.jax_default_matmul_precision is None  # refused: nothing changed
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA build of PyTorch"):
            setup_torch("gpu")
    assert setup_torch("cpu")(3) == 3


def test_table_shows_gpu_memory_only_when_measured():
    assert "GPU MB" not in format_table([Row("forward", jax_s=1.0, torch_s=2.0)])
    table = format_table([Row("forward", jax_s=1.0, torch_s=2.0, gpu_peak_mb=812.0, torch_gpu_peak_mb=1024.0)])
    assert "jax GPU MB" in table and "| 812 " in table and "| 1024 " in table


def test_run_jobs_hands_over_every_finished_row(monkeypatch):
    """A run cut short (a timeout, a lost machine) keeps what it finished: `on_row` sees each row."""
    from sycojax.bench import runner
    from sycojax.bench.context import Context, Inputs

    ctx = Context("m", "/x", Inputs([[1]], [[1]], 0, 10), 2)
    monkeypatch.setattr(runner, "prepare", lambda names, device, **kw: (ctx, None))
    monkeypatch.setattr(runner, "measure_peaks", lambda threads, device: {"jax": (1e9, 1e9, 1e9),
                                                                          "torch": (1e9, 1e9, 1e9)})
    fake = {"min_s": 1.0, "median_s": 1.0, "cpu_min_s": 1.0, "first_s": 1.0, "setup_s": 0.0,
            "peak_rss_mb": 100.0, "check": [1], "info": None}
    monkeypatch.setattr(runner, "run_side", lambda *a, **k: dict(fake))
    seen = []
    out = runner.run_jobs(["consolidate_e2e", "consolidate_e2e"], 1, log=lambda s: None,
                          on_row=lambda o: seen.append((len(o["rows"]), o["meta"]["complete"])))
    assert seen == [(1, False), (2, True)] and out["meta"]["complete"] and out["rows"][0].ratio == 1.0


def test_each_job_names_its_peers_and_bad_ones_are_refused():
    from sycojax.bench.jobs import ALL_SIDES, HF_STATIC, JAX_INT8, LLAMA_F32, LLAMA_Q8, TORCH_COMPILE, framework

    assert JOBS["forward"].sides == ("jax", "torch", TORCH_COMPILE)
    assert all(TORCH_COMPILE in JOBS[n].sides for n in ("lora_step", "memory_step", "full_step", "consolidate_e2e"))
    assert set(JOBS["generate_b1"].peers) == {HF_STATIC, LLAMA_F32, LLAMA_Q8, JAX_INT8}
    assert LLAMA_F32 not in JOBS["generate_b8"].peers and JAX_INT8 in JOBS["generate_b8"].peers  # llama.cpp: batch 1
    assert [framework(s) for s in ALL_SIDES] == ["jax", "torch", "torch", "torch", "llama_cpp", "llama_cpp", "jax"]
    with pytest.raises(ValueError, match="unknown side 'onnx'"):
        framework("onnx")
    with pytest.raises(ValueError, match="unknown peer"):
        job("x", tokens=None, flops=None, peers=("onnx",))
    with pytest.raises(ValueError, match="order must list"):
        job("x", tokens=None, flops=None, peers=(TORCH_COMPILE,), order=("torch", "jax"))


def test_peer_fields_best_ratio_int8_and_the_reason_a_peer_could_not_run(monkeypatch):
    """Every peer of a row in the same run: its seconds (or why it could not run), the fastest one's ratio to ours,
    int8 beside llama.cpp Q8_0; a peer that fails does not fail the run, ours failing does."""
    from sycojax.bench import runner
    from sycojax.bench.context import Context, Inputs

    ctx = Context("m", "/x", Inputs([[1]], [[1]], 0, 10), 2)
    monkeypatch.setattr(runner, "prepare", lambda names, device, **kw: (ctx, None))
    monkeypatch.setattr(runner, "measure_peaks", lambda threads, device: {"jax": (1e9, 1e9, 1e9),
                                                                          "torch": (1e9, 1e9, 1e9)})
    seconds = {"jax": 2.0, "torch": 6.0, "hf_static_compile": 4.0, "llama_cpp_f32": 2.5, "jax_int8": 1.0}

    def run_side(spec, job, side, repeats, timeout_s=0, device="cpu"):
        if side == "llama_cpp_q8_0":
            raise RuntimeError("generate_b1/llama_cpp_q8_0 worker failed (exit 1):\nTraceback\n"
                               "LlamaCppUnavailable: llama-cpp-python is not installed: pip install llama-cpp-python")
        t = seconds[side]
        return {"min_s": t, "median_s": t, "cpu_min_s": t, "first_s": t + 10, "setup_s": 0.0, "peak_rss_mb": 1.0,
                "check": [1, 2] if side != "llama_cpp_f32" else [1, 3], "info": None,
                "recompiles": 0 if side.startswith("jax") else None}

    monkeypatch.setattr(runner, "run_side", run_side)
    monkeypatch.setattr(runner, "make_row", lambda name, cfg, inputs, res, peaks, failed: _row(name, res, failed))

    def _row(name, res, failed):
        row = Row(name, jax_s=res["jax"]["min_s"], torch_s=res["torch"]["min_s"])
        runner.add_peers(row, JOBS[name], res, failed)
        return row

    (row,) = runner.run_jobs(["generate_b1"], 1, sides=list(seconds) + ["llama_cpp_q8_0"], log=lambda s: None)["rows"]
    assert row.error is None  # a peer that cannot run here is a row entry, not a failed run
    assert row.peers["torch_eager"] == 6.0 and row.peers["hf_static_compile"] == 4.0
    assert row.peers["llama_cpp_q8_0"] == ("could not run: LlamaCppUnavailable: llama-cpp-python is not installed: "
                                           "pip install llama-cpp-python")
    assert (row.best_peer, row.best_peer_ratio, row.int8, row.int8_ratio_q8_0) == ("llama_cpp_f32", 1.25, 1.0, None)
    assert row.peer_agree == {"hf_static_compile": 1.0, "llama_cpp_f32": 0.5, "jax_int8": 1.0}
    assert row.first_call_s["jax"] == 12.0 and row.recompiles == 0
    table = runner.format_peer_table([row], {"torch_compile_mode": "default"})
    assert "| 1.25x" in table and "n/a" in table and "generate_b1/llama_cpp_q8_0: could not run" in table
    assert "ours recompiled 0x" in table
    json.dumps(dataclasses.asdict(row))

    def ours_fails(spec, job, side, repeats, timeout_s=0, device="cpu"):
        if side == "jax":
            raise RuntimeError("boom")
        return run_side(spec, job, side, repeats)

    monkeypatch.setattr(runner, "run_side", ours_fails)
    monkeypatch.setattr(runner, "make_row", lambda name, cfg, inputs, res, peaks, failed: Row(name))
    (row,) = runner.run_jobs(["generate_b1"], 1, sides=["jax", "torch"], log=lambda s: None)["rows"]
    assert row.error == "jax: boom"


@pytest.mark.slow
def test_torch_compile_peer_runs_the_same_forward_as_eager(tiny_llama, tmp_path):
    """The torch_compile side is the eager PyTorch job under `torch.compile` (inductor): same argmax tokens."""
    pytest.importorskip("torch")
    import jax
    import numpy as np

    from sycojax.bench.context import Context, Inputs
    from sycojax.bench.jobs import TORCH, TORCH_COMPILE
    from sycojax.models.loading import export_hf

    cfg, params = tiny_llama
    export_hf(jax.tree.map(np.asarray, params), cfg, tmp_path / "hf")
    rows = np.random.default_rng(0).integers(0, cfg.vocab_size, (4, 256)).tolist()
    ctx = Context("tiny", str(tmp_path / "hf"), Inputs(rows, [], 0, cfg.vocab_size), 1)
    eager, compiled = (JOBS["forward"].build(side, ctx) for side in (TORCH, TORCH_COMPILE))
    assert compiled.check(compiled.run()) == eager.check(eager.run())
