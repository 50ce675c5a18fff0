"""The CCM chat on the real SmolLM2 through a pipe (slow): three turns in, three replies and three status
lines out, memory growing by n_tok entries per layer per compressed turn; a non-CCM workdir is one line."""

import os
import re
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from sycojax.adapters.export import save_tree
from sycojax.methods import ccm
from sycojax.models.loading import load_model

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")


def _chat(*args, stdin=""):
    return subprocess.run([sys.executable, str(ROOT / "launch/chat.py"), *args], input=stdin, capture_output=True,
                          text=True, timeout=900, env=ENV, cwd=ROOT, check=False)


def test_ccm_chat_through_a_pipe(tmp_path):
    cfg, params, info = load_model("smollm2-135m-instruct")
    spec = ccm.CCMSpec(n_tok=2)
    tr = ccm.init_trainable(params, cfg, spec, jax.random.key(0))  # untrained trees: the plumbing, not quality
    meta = {"method": "ccm", "model": "smollm2-135m-instruct", "base_model": info.id, "n_tok": 2,
            "attn_type": "concat_recur", "lora_rank": 8, "lora_alpha": 16.0, "lora_targets": ["q", "k", "v", "o"]}
    save_tree(tr, tmp_path / "run" / "adapter", meta)
    out = _chat(f"--ccm={tmp_path / 'run'}", "--max_new_tokens=8", stdin="Hi there!\nWhat do you like?\nBye.\n")
    assert out.returncode == 0, out.stderr[-3000:]
    status = [ln for ln in out.stdout.splitlines() if ln.startswith("[turn ")]
    assert len(status) == 3, out.stdout
    entries = [int(re.search(r"memory (\d+) K/V entries", s).group(1)) for s in status]
    assert entries == [4, 8, 12]  # 2 turns (yours + the reply) x n_tok = 2 per exchange
    assert all("the full context would be" in s for s in status)
    replies = [ln for ln in out.stdout.splitlines() if ln.startswith("B: ")]  # you are A, the model B
    assert len(replies) >= 3, out.stdout


def test_ccm_flag_on_a_non_ccm_workdir_is_one_line(tmp_path):
    (tmp_path / "adapter").mkdir()
    save_tree({"x": jax.numpy.zeros(2)}, tmp_path / "adapter", {"method": "lora"})
    out = _chat(f"--ccm={tmp_path}")
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        f"error: --ccm {tmp_path} holds a 'lora' adapter, not a CCM one; point at a launch/train_ccm.py workdir"]
