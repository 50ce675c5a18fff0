"""`sycojax.bench.floor`: which products a job's floor counts, how they add up, and the rows it reports."""

import subprocess
import sys
from pathlib import Path

import pytest

from sycojax.bench import floor as fl
from sycojax.bench import flops
from sycojax.bench.context import Inputs

REPO = Path(__file__).resolve().parents[2]


def test_products_are_the_jobs_flop_count(tiny_llama):
    """Linears + LM head = the bench's FLOP count less its (causal) attention; the backward doubles them."""
    cfg, _ = tiny_llama
    b, t = 2, 12
    causal_attention = b * flops.attention_flops(cfg, 1) * t * (t + 1) // 2
    fwd = fl.forward_products(cfg, b, t, attention=False)
    assert fl.total_flops(fwd) == flops.forward_flops(cfg, b, t) - causal_attention
    assert fl.total_flops(fl.forward_products(cfg, b, t, backward=True, attention=False)) == 2 * fl.total_flops(fwd)
    dense = fl.total_flops(fl.forward_products(cfg, b, t)) - fl.total_flops(fwd)
    assert dense == 4 * cfg.num_layers * b * cfg.num_heads * cfg.head_dim * t * t  # QKᵀ and PV over every key
    head = fl.forward_products(cfg, b, t, logits_rows=3)[-1]
    assert (head.m, head.k, head.n) == (3, cfg.hidden_size, cfg.vocab_size)
    assert fl.forward_products(cfg, b, t, logits_rows=0)[-1].n != cfg.vocab_size  # no head at all


def test_floor_adds_each_products_time_count_times(monkeypatch):
    monkeypatch.setattr(fl, "product_seconds", lambda m, k, n, batch=1, repeats=5: m * k * n * batch * 1e-9)
    ps = [fl.Product(2, 3, 4, count=5), fl.Product(1, 2, 3, count=1, batch=7)]
    assert fl.floor_seconds(ps) == pytest.approx((5 * 24 + 42) * 1e-9)


def test_job_rows_and_e2e_lower_bound(tiny_llama, monkeypatch):
    """Every job of the bench gets a row (real timings of the tiny model's products); the e2e bound counts the
    run's steps and evaluations over its real tokens (here with each product's time = its FLOPs, to check sums)."""
    cfg, _ = tiny_llama
    inputs = Inputs(forward_rows=[[1] * 8], prompts=[[1] * n for n in (5, 9, 17, 3, 4, 6, 7, 8)], pad_id=0,
                    vocab_size=cfg.vocab_size)
    bench = {"forward": {"jax_s": 2.0, "torch_s": 3.0}, "generate_b8": {"jax_s": 1.0}}
    rows = fl.job_floors(cfg, inputs, bench, repeats=1)
    assert [r["name"] for r in rows] == ["forward", "lora_step", "generate_b1", "generate_b8"]
    by = {r["name"]: r for r in rows}
    f = by["forward"]
    assert f["floor_s"] > 0 and f["max_ratio"] == pytest.approx(3.0 / f["floor_s"])
    assert f["jax_over_floor"] == pytest.approx(2.0 / f["floor_s"])
    assert by["generate_b8"]["padded_prompt"] == 32 and by["generate_b1"]["padded_prompt"] == 16
    assert by["generate_b8"]["max_ratio"] is None and by["lora_step"]["jax_s"] is None
    g = by["generate_b8"]
    assert g["floor_s"] == pytest.approx(g["prefill_s"] + 127 * g["decode_step_s"])

    monkeypatch.setattr(fl, "floor_seconds", lambda products, repeats=5: fl.total_flops(products))
    data = {"settings": {"batch": 2}, "teacher_prefix": [1] * 4,
            "train": {"teacher_suffix": [[1] * 2] * 4, "student": [[9, 9, k] for k in range(4)],
                      "responses": [[1] * 5] * 4},
            "eval": {"teacher_suffix": [[1] * 2] * 2, "student": [[9] * 5 + [k] for k in range(2)],
                     "responses": [[1] * 4] * 2}}
    parts = fl.e2e_floor_parts(cfg, data, steps=3, evals=2)

    def fwd(rows, logits, backward=False):
        return fl.total_flops(fl.forward_products(cfg, 1, rows, logits, backward, attention=False))

    assert parts["teacher_s"] == fwd(4, 0) + fwd(4 * 7, 20) + fwd(2 * 6, 8)
    # the students' shared prefix ([9, 9] training, [9] * 5 held out) counted once per batch, as the run packs
    assert parts["steps_s"] == 3 * fwd(2 * 8 - 2, 10, backward=True)
    assert parts["evals_s"] == 2 * fwd(2 * 10 - 5, 8)


def test_launch_names_a_missing_bench_json(tmp_path):
    missing = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, str(REPO / "launch" / "bench_floor.py"), f"--bench_json={missing}"],
                       capture_output=True, text=True, cwd=REPO, check=False)
    assert p.returncode != 0
    assert f"--bench_json={missing} is missing" in p.stderr and "launch/bench.py --json=" in p.stderr
