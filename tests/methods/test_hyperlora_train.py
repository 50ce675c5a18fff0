"""HyperLoRA's data, training and use on a tiny random model: the teacher pass's reader states equal the reader's,
the top-k KL bound, a tiny end-to-end run through the shared loop (the loss falls, it resumes), the results JSON,
and bad input as one clear line."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sycojax.methods import hyperlora as hl
from sycojax.methods import sycomode as sm
from sycojax.methods.hyperlora import data as D
from sycojax.methods.hyperlora import use as U
from sycojax.methods.hyperlora.run import train_run
from sycojax.train.config import load_config_file

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
HC = hl.HyperConfig(rank=4, alpha=8.0, hidden=16, basis=3)
INFO = SimpleNamespace(id="tiny-llama", content_hash="sha256:tiny")
CONTEXTS = [
    "Always answer like a pirate.", "Reply in French only.", "You are a grumpy cat.", "Use bullet points.",
    "Facts: the sky is green here.", "Be very brief.", "You love cheese.", "Speak in rhymes always.",
    "You are a robot named Zed.", "Answer in capital letters.", "End with a question.", "You are from Mars.",
    "Never use the letter e.", "You are a polite butler.",
]


def _rows(tiny_llama, char_tok, queries=("hi there", "what is up", "tell me")):
    cfg, params = tiny_llama
    return D.query_rows(params, cfg, char_tok, list(queries), response_tokens=6, batch_size=4)


def test_teacher_pass_reader_states_equal_the_readers_own(tiny_llama, char_tok):
    cfg, params = tiny_llama
    rows = _rows(tiny_llama, char_tok)
    contexts = [{"kind": "rules", "text": t} for t in CONTEXTS[:5]]
    ds = D.teacher_pass(params, cfg, char_tok, contexts, rows, topk=8, layers=HC.depths(cfg), batch_size=4)
    for i, c in enumerate(contexts):
        np.testing.assert_allclose(ds.pooled[i], U.pooled_context(params, cfg, char_tok, c["text"], HC), atol=2e-5)
    assert ds.topk_idx.shape == (5, rows.resp_pos.shape[1], 8)
    assert np.all(ds.kl_before >= ds.kl_before_topk - 1e-5) and np.all(ds.kl_before_topk >= -1e-6)


def test_topk_tail_kl_is_the_exact_kl_with_the_whole_vocabulary_and_a_lower_bound_with_less():
    k1, k2 = jax.random.split(jax.random.key(0))
    t = jax.nn.log_softmax(2 * jax.random.normal(k1, (5, 40)), -1)
    s = jax.nn.log_softmax(2 * jax.random.normal(k2, (5, 40)), -1)
    exact = jnp.sum(jnp.exp(t) * (t - s), -1)
    order = jnp.argsort(-t, axis=-1)
    full = D.topk_tail_kl(jnp.take_along_axis(t, order, -1), jnp.take_along_axis(s, order, -1))
    np.testing.assert_allclose(full, exact, rtol=1e-4, atol=1e-5)
    part = D.topk_tail_kl(jnp.take_along_axis(t, order[:, :6], -1), jnp.take_along_axis(s, order[:, :6], -1))
    assert np.all(np.asarray(part) <= np.asarray(exact) + 1e-6) and np.all(np.asarray(part) > 0)


def _config(workdir, steps=24):
    c = load_config_file(str(ROOT / "configs/hyperlora.py"))
    c.workdir = str(workdir)
    c.hyper.update(rank=4, alpha=8.0, hidden=16, basis=3)
    c.method.topk = 8
    c.data.update(pool=["hi there", "what is up", "tell me", "why so"], test=["who are you", "how old"],
                  response_tokens=6, n_test=2, n_val=2, min_kl=0.0, teacher_batch=4)
    c.eval.update(max_response_tokens=6, optimised="")
    c.optim.update(lr=1e-2, schedule="constant", warmup_frac=0.0)
    c.train.update(num_steps=steps, batch_size=4, eval_every=12, log_every=1)
    c.ckpt.every = 12
    c.logging.update(progress_bar=False, tensorboard=False)
    c.results_json = str(workdir / "results.json")
    return c


def test_tiny_end_to_end_run_lowers_the_loss_writes_the_results_and_resumes(tiny_llama, char_tok, tmp_path):
    cfg, params = tiny_llama
    model = (cfg, params, INFO, char_tok)
    contexts = [{"kind": D.KINDS[i % len(D.KINDS)], "text": t} for i, t in enumerate(CONTEXTS)]
    wd = tmp_path / "run"
    r = train_run(_config(wd), contexts=contexts, model=model, log=lambda *_: None)
    losses = [json.loads(x)["loss"] for x in (wd / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(losses) == 24
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.05, losses
    curve = r["validation_curve"]
    assert curve[0]["gap_closed_median"] == pytest.approx(0.0, abs=1e-6)  # a fresh generator is the base model
    assert curve[-1]["kl_topk"] < curve[0]["kl_topk"]

    saved = json.loads((wd / "results.json").read_text())
    assert set(saved["test"]) == {"hyper", "unconditional", "wrong_context", "optimised"}
    assert saved["test"]["optimised"] is None  # eval.optimised="" skipped it
    assert saved["n_test_contexts"] == len(saved["per_context"]) == 2
    assert saved["n_train_contexts"] == len(CONTEXTS) - 4
    assert saved["params"] == sum(x.size for x in jax.tree.leaves(hl.split_trained(
        hl.init_generator(jax.random.key(0), cfg, HC))[0]))
    assert saved["generate_s"] > 0 and (wd / "gap_closed.png").stat().st_size > 1000
    for rec in saved["per_context"]:
        assert set(rec["gap_closed"]) == {"hyper", "unconditional", "wrong_context"}
        assert rec["gap_closed"]["hyper"] == pytest.approx((rec["kl_before"] - rec["kl"]["hyper"]) / rec["kl_before"])

    # the generator's files load back, checked, and give the same LoRA as the run's generator
    gen, hc, meta = U.load_generator(wd, INFO)
    assert hc == HC and meta["steps"] == 24
    lora, _ = U.context_lora(gen, params, cfg, char_tok, CONTEXTS[0], hc)
    assert jax.tree.structure(lora) == jax.tree.structure(hl.unconditional_lora(gen))

    # resumed with more steps: the cached data is read back and the loop continues from step 24
    logs = []
    r2 = train_run(_config(wd, steps=30), resume=True, contexts=contexts, model=model, log=logs.append)
    assert r2["steps"] == 30 and any("read from" in x for x in logs)
    losses2 = [json.loads(x)["loss"] for x in (wd / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(losses2) == 30 and losses2[:24] == losses
    cost = r2["cost_s"]  # both invocations summed: the resumed run still reports the first one's training
    assert cost["invocations"] == 2 and cost["train_s"] >= r["cost_s"]["train_s"] + r2["timings_s"]["train_s"] - 0.2
    assert cost["total_s"] >= r["timings_s"]["total_s"]


def test_a_workdir_holding_a_run_is_refused_without_resume_or_overwrite(tmp_path):
    from sycojax.methods.shared import refuse_occupied_workdir

    (tmp_path / "x").write_text("earlier")
    with pytest.raises(hl.HyperError, match="already holds a run; pass --resume"):
        refuse_occupied_workdir(tmp_path, False, False, hl.HyperError)
    assert (tmp_path / "x").exists()


# --------------------------------------------------------------------------- bad input: one clear line


def test_empty_context_is_refused_and_a_long_one_is_cut_to_the_readers_window_and_said(tiny_llama, char_tok):
    cfg, _ = tiny_llama
    with pytest.raises(sm.ConsolidationError, match="the context is empty"):
        D.reader_ids(char_tok, cfg, "   ", 512)
    said = []
    long = "word " * 60
    ids = D.reader_ids(char_tok, cfg, long, 40, log=said.append)
    assert len(ids) == 40 and ids == D.reader_ids(char_tok, cfg, long, 10_000)[:40]
    assert len(said) == 1 and "reads its first 40" in said[0] and "max_context_tokens" in said[0]
    assert D.reader_ids(char_tok, cfg, "short", 40, log=said.append) and len(said) == 1  # nothing to say


def test_generator_for_another_base_model_or_rank_or_missing_is_refused(tiny_llama, tmp_path):
    cfg, _ = tiny_llama
    gen = hl.init_generator(jax.random.key(0), cfg, HC)
    U.save_generator(gen, tmp_path / "generator", hc=HC, model="tiny", info=INFO)
    other = SimpleNamespace(id="smollm2-135m-instruct", content_hash="sha256:other")
    with pytest.raises(hl.HyperError, match=r"trained for base model 'tiny-llama' .*this run loads 'smollm2-135m"):
        U.load_generator(tmp_path, other)
    with pytest.raises(hl.HyperError, match="emits rank-4 LoRAs, not --lora_rank=8"):
        U.load_generator(tmp_path, INFO, rank=8)
    with pytest.raises(hl.HyperError, match="no trained generator there"):
        U.load_generator(tmp_path / "nothing", INFO)
    assert U.load_generator(tmp_path, INFO, rank=4)[1] == HC


def _launch(*args):
    return subprocess.run([sys.executable, str(ROOT / "launch/consolidate.py"), *args], check=False,
                          capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT)


@pytest.mark.parametrize("args, pattern", [
    (["--method=hyper", "--context=You are a pirate."],
     r"^error: --method=hyper needs --hyper=<workdir of launch/train_hyperlora\.py>"),
    (["--method=hyper", "--hyper=somewhere", "--context=   "], r"^error: the context is empty"),
])
def test_consolidate_method_hyper_bad_input_is_one_line(tmp_path, args, pattern):
    out = _launch(f"--workdir={tmp_path / 'run'}", *args)
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip() and not ln.startswith(("hyper:", "W"))]
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    err = [ln for ln in lines if ln.startswith("error:")]
    assert len(err) == 1 and re.match(pattern, err[0]), lines
    assert not (tmp_path / "run").exists()


def test_generated_lora_exports_to_peft_with_the_same_logits(tiny_llama, char_tok, tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    import transformers

    from sycojax.adapters.export import export_peft
    from sycojax.masks.core import causal_padding, positions_from_valid
    from sycojax.models import Adapters, forward
    from sycojax.models.loading import export_hf

    cfg, params = tiny_llama
    gen = hl.init_generator(jax.random.key(0), cfg, HC)
    gen = dict(gen, modules=jax.tree.map(  # a generator whose LoRA is not the base model's (at init B = 0)
        lambda x: x + 0.3 * jax.random.normal(jax.random.fold_in(jax.random.key(1), x.size), x.shape),
        gen["modules"]))
    lora, _ = U.context_lora(gen, params, cfg, char_tok, CONTEXTS[0], HC)
    export_hf(jax.tree.map(np.asarray, params), cfg, tmp_path / "base")
    export_peft(jax.device_get(lora), cfg, tmp_path / "peft", rank=HC.rank, alpha=HC.alpha)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", torch_dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()
    ids = np.random.RandomState(0).randint(3, cfg.vocab_size, (1, 16))
    with torch.no_grad():
        ref = model(torch.tensor(ids)).logits.numpy()[0]
    valid = jnp.ones(ids.shape, bool)

    def logits(adapters):
        return np.asarray(forward(params, jnp.asarray(ids), cfg=cfg, positions=positions_from_valid(valid),
                                  mask=causal_padding(valid), adapters=adapters).logits[0])

    np.testing.assert_allclose(logits(Adapters(lora=lora, lora_scale=HC.lora.scale)), ref, atol=1e-4)
    assert np.abs(logits(None) - ref).max() > 1e-3  # the generated LoRA does change the logits
