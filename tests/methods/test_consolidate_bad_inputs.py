"""Bad input to `launch/consolidate.py` ends in one line naming the problem and the fix, exit status 1,
and leaves the workdir as it was (each case fails before the model is read or anything is written)."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest

from sycojax.methods import consolidate

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    latin1 = tmp / "latin1.txt"
    latin1.write_bytes("café au lait".encode("latin-1"))
    pickle_file = tmp / "pytorch_model.bin"
    pickle_file.write_bytes(b"\x80\x04not really")
    return {
        "unknown model": (["--model=nope"], r"^error: unknown model 'nope'\. Known names: smollm2-135m-instruct"),
        "pickle": ([f"--model={pickle_file}"], r"^error: .*pytorch_model\.bin is a PyTorch pickle .*convert it to "
                                               r"safetensors .* and load OUT$"),
        "not utf-8": ([f"--context_file={latin1}"], r"^error: --context_file .*latin1\.txt' is not UTF-8 text \(byte "
                                                    r"0xe9 at position 3\); save it as UTF-8"),
        "config arg": (["--config=configs/consolidate.py:nosuch"], r"^FATAL Flags parsing error: .*takes no ':nosuch' "
                                                                   r"argument .*drop ':nosuch'"),
        "config typo": (["--config.train.nusteps=3"], r"^FATAL Flags parsing error: unknown config key "
                                                      r"train\.nusteps; did you mean train\.num_steps\?$"),
        "zero steps": (["--num_iter=0"], r"^error: train\.num_steps=0: a run needs at least one optimizer step"),
        "negative steps": (["--num_iter=-3"], r"^error: train\.num_steps=-3: a run needs at least one optimizer step"),
        "nan lr": (["--lr=nan"], r"^error: optim\.lr=nan: the learning rate must be a finite number"),
    }


NAMES = ["unknown model", "pickle", "not utf-8", "config arg", "config typo", "zero steps", "negative steps", "nan lr"]


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_is_one_line_and_overwrites_nothing(tmp_path, name):
    args, pattern = _bad_inputs(tmp_path)[name]
    run = tmp_path / "run"  # an earlier run's outputs, replaced only by a run that gets going
    run.mkdir()
    (run / "report.json").write_text('{"earlier": true}')
    out = subprocess.run([sys.executable, str(ROOT / "launch/consolidate.py"), f"--workdir={run}", "--overwrite",
                          *args], capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT, check=False)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1, out.stderr[-2000:]
    assert len(lines) == 1, out.stderr[-2000:]
    assert re.search(pattern, lines[0]), lines[0]
    assert sorted(p.name for p in run.iterdir()) == ["report.json"]
    assert (run / "report.json").read_text() == '{"earlier": true}'


def _config() -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("cfg", ROOT / "configs/consolidate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_presets_set_their_budget_except_what_the_command_line_gave():
    c = _config()
    assert consolidate.apply_preset(c, "quality", keep={"train.num_steps"})
    q = consolidate.PRESETS["quality"]
    assert c.preset == "quality" and c.train.num_steps == _config().train.num_steps  # kept
    assert c.data.self_study_queries == q["data.self_study_queries"] > 0
    assert c.optim.lr == q["optim.lr"]["lora"] and c.optim.schedule == "cosine"
    c.method.name = "memory"
    consolidate.apply_preset(c, "quick")
    assert c.train.num_steps == 16 and c.optim.lr == consolidate.PRESETS["quick"]["optim.lr"]["memory"]
    with pytest.raises(Exception, match="unknown --preset='slow'; choose quick or quality"):
        consolidate.apply_preset(c, "slow")


def test_quick_preset_is_the_demo_config():
    """`make demo` runs --preset=quick: the preset must not change what the demo's figures came from."""
    c, base = _config(), _config()
    consolidate.apply_preset(c, "quick")
    for key in consolidate.PRESETS["quick"]:  # the demo trains LoRA, so optim.lr is quick's LoRA value
        section, field = key.split(".")
        assert getattr(getattr(c, section), field) == getattr(getattr(base, section), field), key
