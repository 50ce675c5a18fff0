"""CCM's references and per-turn evaluation: the gist and full kinds, and `evaluate`'s scorers against the one-pass
training computation they stand for."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sycojax.adapters.export import save_tree
from sycojax.data.sources import EmptyDatasetError
from sycojax.methods import ccm
from sycojax.methods.ccm import evaluate as E

BOS, EOS, SEP, PAD = 1, 2, 5, 0
IDS = E.Ids(bos=BOS, sep=SEP, eos=EOS, pad=PAD)
ROOT = Path(__file__).resolve().parents[2]


def _trainable(params, cfg, spec, seed=0):
    tr = ccm.init_trainable(params, cfg, spec, jax.random.key(seed))
    tr["lora"] = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(seed + 1), x.shape), tr["lora"])
    return tr


def _convs(lens=((3, 5, 2, 4, 3, 2), (6, 1, 4, 2, 5))):
    rng = np.random.default_rng(0)
    return [[list(map(int, rng.integers(6, 100, size=n))) for n in c] for c in lens]


def _one_pass(params, tr, cfg, spec, conv, t):
    """The target NLL of turn t (1-based) from the training row that holds every earlier turn."""
    row = ccm.dialog_rows(conv[:t], ccm.group_ids(cfg, spec), bos=BOS, sep=SEP, eos=EOS, max_len=10**6,
                          gist=spec.gist)[-1]
    arr = ccm.to_arrays([row], 64, PAD)  # one length: one compile per kind
    logits = _forward(params, tr, cfg, spec, jnp.asarray(arr["tokens"]), jnp.asarray(arr["valid"]))
    return float(ccm.output_nll(logits, jnp.asarray(arr["tokens"]), jnp.asarray(arr["weights"])))


_forward = jax.jit(ccm.ccm_forward_logits, static_argnames=("cfg", "spec"))


def test_gist_rows_hold_one_group_after_the_whole_context():
    comp = [101, 102]
    rows = ccm.dialog_rows([[10, 11], [20], [30, 31], [40]], comp, bos=BOS, sep=SEP, eos=EOS, max_len=64, gist=True)
    assert rows[-1].tokens == [BOS, 10, 11, SEP, 20, *comp, SEP, 30, 31, SEP, 40, EOS]
    assert rows[-1].tokens[rows[-1].loss_start :] == [40, EOS] and rows[-1].context_turns == 2
    short = ccm.dialog_rows([[10, 11], [20], [30, 31], [40]], comp, bos=BOS, sep=SEP, eos=EOS, max_len=11, gist=True)
    assert short[-1].tokens[:4] == [BOS, 20, *comp]  # the oldest turn goes first, as for concat


def test_full_kind_is_a_lora_everywhere_on_the_uncompressed_row(tiny_llama):
    cfg, params = tiny_llama
    spec = ccm.CCMSpec(attn_type="full")
    tr = ccm.init_trainable(params, cfg, spec, jax.random.key(0))
    assert set(tr) == {"lora"} and ccm.group_ids(cfg, spec) == []
    row = ccm.dialog_rows(_convs()[0], [], bos=BOS, sep=SEP, eos=EOS, max_len=64)[-1]
    t = jnp.asarray([row.tokens])
    base = E._token_nll(params, None, t, t > 0, t, cfg=cfg, spec=spec)
    zero_b = E._token_nll(params, tr, t, t > 0, t, cfg=cfg, spec=spec)  # B = 0 at init: the base exactly
    np.testing.assert_allclose(np.asarray(zero_b), np.asarray(base), atol=1e-6)
    moved = E._token_nll(params, _trainable(params, cfg, spec), t, t > 0, t, cfg=cfg, spec=spec)
    assert not np.allclose(np.asarray(moved[0, :3]), np.asarray(base[0, :3]), atol=1e-4)  # acts at the first tokens
    with pytest.raises(ValueError, match="attn_type='full'"):
        ccm.check_trees(tr, ccm.CCMSpec())


def test_the_one_pass_full_context_row_scores_every_turn_as_its_own_row(tiny_llama):
    """One forward of a whole conversation gives each turn's `O EOS` NLL of the row cut after it (causal)."""
    cfg, params = tiny_llama
    model = E.Model(None, ccm.CCMSpec())
    convs = _convs()
    got = E.reference_losses(params, model, cfg, convs, IDS, max_turn=6, entries=lambda t: 10**6)
    for conv in convs:
        for t in range(3, len(conv) + 1):
            row = ccm.dialog_rows(conv[:t], [], bos=BOS, sep=SEP, eos=EOS, max_len=10**6)[-1]
            one = E.score_rows(params, model, cfg, [(row.tokens, [(row.loss_start, len(row.tokens) - 1)])], eos=EOS)
            assert got["full"][t][convs.index(conv)] == pytest.approx(one[0][0], abs=1e-5)
    # a window holding the whole context is the full context; none is [BOS] I SEP O EOS
    np.testing.assert_allclose(got["sliding"][4], got["full"][4], atol=1e-5)
    small = E.reference_losses(params, model, cfg, convs, IDS, max_turn=6, entries=lambda t: 1)
    np.testing.assert_allclose(small["sliding"][5], small["none"][5], atol=1e-6)


@pytest.mark.parametrize("attn_type", ["concat_recur", "merge_recur", "gist"])
def test_per_turn_losses_equal_the_one_pass_training_computation(tiny_llama, attn_type):
    cfg, params = tiny_llama
    spec = ccm.CCMSpec(n_tok=2, attn_type=attn_type)
    tr = _trainable(params, cfg, spec)
    convs = _convs()
    fn = E.gist_losses if spec.gist else E.recurrent_losses
    got, nbytes = fn(params, E.Model(tr, spec), cfg, convs, IDS, max_turn=5, batch=2)
    for t, per in got.items():
        want = [_one_pass(params, tr, cfg, spec, c, t) for c in convs if len(c) >= t]
        np.testing.assert_allclose(per, want, rtol=1e-4, atol=1e-5)
    entries = {t: (2 if attn_type != "concat_recur" else 2 * (t - 2)) for t in got}
    assert nbytes == {t: entries[t] * E.kv_bytes_per_entry(cfg) for t in got}
    if spec.recurrent:
        assert E.parity(params, E.Model(tr, spec), cfg, convs[0], IDS) < 1e-4


def test_evaluate_reports_every_method_per_turn_and_the_gap(tiny_llama):
    cfg, params = tiny_llama
    models = {k: E.Model(_trainable(params, cfg, ccm.CCMSpec(attn_type=a)), ccm.CCMSpec(attn_type=a))
              for k, a in (("ccm_concat", "concat_recur"), ("ccm_merge", "merge_recur"), ("gist", "gist"),
                           ("full", "full"))}
    res = E.evaluate(params, cfg, models, _convs(), IDS, max_turn=6, from_turn=4, batch=2, log=lambda *_: None)
    want = {"full", "none", "sliding", "full_base", "none_base", "sliding_base", "ccm_concat", "ccm_merge", "gist"}
    assert set(res["loss"]) == want and set(res["memory_bytes"]) == want
    assert list(res["loss"]["ccm_concat"]) == ["3", "4", "5", "6"] and res["count"] == {"3": 2, "4": 2, "5": 2, "6": 1}
    assert res["memory_bytes"]["ccm_concat"]["5"] == res["memory_bytes"]["sliding"]["5"] < res["memory_bytes"]["full"]["5"]
    s = res["summary"]
    gap = s["loss"]["none"] - s["loss"]["full"]
    if gap > 0:
        assert s["gap_recovered"]["ccm_concat"] == pytest.approx((s["loss"]["none"] - s["loss"]["ccm_concat"]) / gap)
    assert res["parity_max_abs_diff"] < 1e-4
    assert len(E.table(res)) == 1 + 4 + 3  # header, turns 3..6, summary


def test_conversation_files_bad_and_good(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text("")
    with pytest.raises(EmptyDatasetError, match="is empty"):
        E.read_conversations(p)
    p.write_text('{"turns": ["hi", "hello"]}\n{"turns": ["a", \n')
    with pytest.raises(EmptyDatasetError, match="line 2: not JSON"):
        E.read_conversations(p)
    p.write_text('{"turns": "hi"}\n')
    with pytest.raises(EmptyDatasetError, match='line 1: needs "turns"'):
        E.read_conversations(p)
    p.write_text(json.dumps([{"id": "x", "turns": ["a", "b", "c"]}]))
    assert E.read_conversations(p) == [{"id": "x", "turns": ["a", "b", "c"]}]
    with pytest.raises(EmptyDatasetError, match="no such file"):
        E.read_conversations(tmp_path / "nope.jsonl")


def test_eval_launch_refuses_a_workdir_of_the_wrong_kind_in_one_line(tmp_path, tiny_llama):
    cfg, params = tiny_llama
    meta = {"method": "ccm", "model": "smollm2-135m-instruct", "n_tok": 2, "attn_type": "concat_recur",
            "lora_rank": 8, "lora_alpha": 16.0, "lora_targets": ["q", "k", "v", "o"]}
    save_tree(ccm.init_trainable(params, cfg, ccm.CCMSpec(), jax.random.key(0)), tmp_path / "adapter", meta)
    env = dict(os.environ, JAX_PLATFORMS="cpu", HF_HUB_OFFLINE="1")
    run = lambda *a: subprocess.run([sys.executable, str(ROOT / "launch/eval_ccm.py"), *a], capture_output=True,  # noqa: E731
                                    text=True, env=env, cwd=ROOT, timeout=300, check=False)
    out = run(f"--ccm={tmp_path}", f"--merge={tmp_path}")
    want = (f"error: --merge {tmp_path} was trained with attn_type='concat_recur', not 'merge_recur'; drop the flag "
            "or train a model with it")
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [want]
    out = run()
    assert out.returncode == 1 and "pass --ccm=" in out.stderr and "Traceback" not in out.stderr
