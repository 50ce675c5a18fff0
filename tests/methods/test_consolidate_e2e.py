"""End to end on the real SmolLM2 (slow): consolidate → report → inspect the Orbax checkpoint → chat.

Tiny settings (4 training queries, 2 held-out, 3 steps): this checks the plumbing and the outputs,
not the quality (that is `launch/consolidate_bench.py`'s job).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")


def _run(*args, timeout=900):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=ENV,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("e2e")
    (d / "train.txt").write_text("Who are you?\nWhat is your favourite food?\n"
                                 "Tell me about the sea.\nHow old are you?\n")
    (d / "eval.txt").write_text("What do you do all day?\nWhere do you live?\n")
    out = _run(ROOT / "launch/consolidate.py", f"--workdir={d / 'run'}", "--num_iter=3", "--lr=2e-3",
               f"--queries_file={d / 'train.txt'}", f"--eval_queries_file={d / 'eval.txt'}",
               "--config.method.max_response_tokens=24", "--config.eval.sample_tokens=16",
               "--config.eval.num_samples=2", "--config.train.eval_every=0", "--config.ckpt.every=2")
    assert out.returncode == 0, out.stderr[-3000:]
    return d, out.stdout


def test_report_has_kl_and_samples_and_last_lines_say_where_outputs_went(workdir):
    d, stdout = workdir
    report = json.loads((d / "run" / "report.json").read_text())
    assert report["kl_before"] > 0 and report["kl_after"] >= 0 and report["steps"] == 3
    assert len(report["samples"]) == 2 and set(report["samples"][0]) == {"query", "teacher", "student", "baseline"}
    assert report["num_train_queries"] == 4 and report["num_eval_queries"] == 2
    assert 0 < report["peak_rss_mb"] < 4096  # consolidating stays under 4 GB
    tail = stdout.strip().splitlines()[-4:]
    assert tail[0].startswith("workdir:") and tail[1].startswith("report:") and tail[3].startswith("plots:")
    assert (d / "run" / "peft" / "adapter_config.json").exists() and (d / "run" / "kl_curve.png").exists()


def test_inspect_ckpt_prints_tree_and_metadata_and_exports(workdir):
    d, _ = workdir
    out = _run(ROOT / "launch/inspect_ckpt.py", d / "run")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "lora.model.layers.self_attn.q_proj.lora_A" in out.stdout and "smollm2-135m-instruct" in out.stdout
    assert "base_hash" in out.stdout and "steps: [2, 3]" in out.stdout
    out = _run(ROOT / "launch/inspect_ckpt.py", d / "run", f"--export={d / 'lora.safetensors'}")
    assert out.returncode == 0, out.stderr[-2000:]
    assert (d / "lora.safetensors").stat().st_size > 1_000_000


def test_second_run_in_the_same_workdir_is_refused_and_chat_works(workdir):
    d, _ = workdir
    out = _run(ROOT / "launch/consolidate.py", f"--workdir={d / 'run'}", "--context=Answer in French.", "--num_iter=1",
               f"--queries_file={d / 'train.txt'}", f"--eval_queries_file={d / 'eval.txt'}")
    assert out.returncode != 0 and "another run's adapter" in (out.stderr + out.stdout)
    out = _run(ROOT / "launch/chat.py", f"--adapter={d / 'run'}", "--prompt=Who are you?", "--max_new_tokens=12")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "context" in out.stdout and len(out.stdout.strip().splitlines()) >= 3
