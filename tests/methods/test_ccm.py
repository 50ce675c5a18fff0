"""CCM: rows as upstream lays them out, the one-pass loss, and inference = the same computation recurrently."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sycojax.data.sources import EmptyDatasetError
from sycojax.masks import causal_padding, positions_from_valid
from sycojax.methods import ccm
from sycojax.methods.ccm.memory import _run
from sycojax.models import forward

BOS, EOS, SEP, PAD = 1, 2, 5, 0


def _spec(n_tok=2, attn_type="concat_recur", sink=False):
    return ccm.CCMSpec(n_tok=n_tok, attn_type=attn_type, sink=sink)


def _trainable(params, cfg, spec, seed=0):
    tr = ccm.init_trainable(params, cfg, spec, jax.random.key(seed))
    # B = 0 at init would hide the gate: give the LoRA a real effect
    tr["lora"] = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(seed + 1), x.shape), tr["lora"])
    return tr


def test_rows_layout_loss_span_and_truncation():
    comp = [101, 102]
    turns = [[10, 11], [20], [30, 31, 32], [40, 41]]
    rows = ccm.dialog_rows(turns, comp, bos=BOS, sep=SEP, eos=EOS, max_len=64)
    assert [r.context_turns for r in rows] == [1, 2]  # targets t = 2, 3 (at least one compressed turn)
    r = rows[-1]
    assert r.tokens == [BOS, 10, 11, *comp, SEP, 20, *comp, SEP, 30, 31, 32, SEP, 40, 41, EOS]
    assert r.tokens[r.loss_start :] == [40, 41, EOS]
    short = ccm.dialog_rows(turns, comp, bos=BOS, sep=SEP, eos=EOS, max_len=13)  # the oldest turn goes first
    assert short[-1].tokens[:4] == [BOS, 20, *comp] and short[-1].context_turns == 1
    arr = ccm.to_arrays(rows, 24, PAD)
    assert arr["weights"][1].sum() == 3 and arr["weights"][1][r.loss_start - 1] == 1  # predicts O's first token
    assert ccm.without_comp(r, comp).tokens == [BOS, 10, 11, SEP, 20, SEP, 30, 31, 32, SEP, 40, 41, EOS]
    with pytest.raises(EmptyDatasetError):
        ccm.to_arrays([], 8, PAD)


def test_split_is_by_conversation_and_fixed():
    dialogs = [{"id": str(i), "turns": ["a", "b", "c"]} for i in range(20)]
    s1, s2 = ccm.split_conversations(dialogs, val=3, test=4, seed=0), ccm.split_conversations(dialogs, val=3, test=4)
    assert s1 == s2 and [len(s1[k]) for k in ("train", "validation", "test")] == [13, 3, 4]
    ids = [d["id"] for k in s1 for d in s1[k]]
    assert sorted(ids) == sorted(d["id"] for d in dialogs)  # each conversation in exactly one split


def test_comp_init_is_the_mean_of_every_nth_vocab_row(tiny_llama):
    cfg, params = tiny_llama
    comp = np.asarray(ccm.init_comp(params, cfg, 3))
    table = np.asarray(params["model"]["embed_tokens"]["weight"])
    np.testing.assert_allclose(comp[1], table[1::3].mean(0), rtol=1e-6)


def test_unknown_attention_type_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="use one of concat_recur, merge_recur"):
        ccm.CCMSpec(attn_type="merge")


def test_lora_acts_only_at_comp_positions(tiny_llama):
    """Text before the first COMP group sees no COMP token: its logits are the frozen base's."""
    cfg, params = tiny_llama
    spec = _spec()
    comp = list(range(cfg.vocab_size, cfg.vocab_size + spec.n_tok))
    row = ccm.dialog_rows([[10, 11, 12], [20, 21], [30]], comp, bos=BOS, sep=SEP, eos=EOS, max_len=64)[-1]
    arr = ccm.to_arrays([row], len(row.tokens), PAD)
    tokens, valid = jnp.asarray(arr["tokens"]), jnp.asarray(arr["valid"])
    got = ccm.ccm_forward_logits(params, _trainable(params, cfg, spec), cfg, spec, tokens, valid)
    base = forward(params, tokens[:, :4], cfg=cfg, positions=positions_from_valid(valid[:, :4]),
                   mask=causal_padding(valid[:, :4])).logits
    np.testing.assert_allclose(np.asarray(got[:, :4]), np.asarray(base), atol=1e-5)
    no_lora = ccm.ccm_forward_logits(params, ccm.init_trainable(params, cfg, spec, jax.random.key(0)), cfg, spec,
                                     tokens, valid)
    assert not np.allclose(np.asarray(got[:, -3:]), np.asarray(no_lora[:, -3:]), atol=1e-4)  # the LoRA matters


@pytest.mark.parametrize(("attn_type", "n_tok", "sink"), [("concat_recur", 1, False), ("concat_recur", 2, False),
                                                        ("concat_recur", 2, True), ("merge_recur", 1, False),
                                                        ("merge_recur", 2, False), ("merge_recur", 2, True)])
def test_recurrent_inference_equals_the_one_pass_training_computation(tiny_llama, attn_type, n_tok, sink):
    """Target-turn NLL and logits from the recurrent memory equal the one-pass training forward (concat: every
    COMP group; merge: the running mean of SUM K/V inside the pass, Mem(t) = (1-1/t) Mem(t-1) + COMP(t)/t)."""
    cfg, params = tiny_llama
    spec = _spec(n_tok, attn_type, sink)
    tr = _trainable(params, cfg, spec)
    group = ccm.group_ids(cfg, spec)
    rng = np.random.default_rng(0)
    convs = [[list(rng.integers(6, 100, size=n)) for n in lens] for lens in ([3, 5, 2, 4, 3], [6, 1, 4, 2, 5])]
    one_pass, one_pass_logits = [], []
    for turns in convs:
        row = ccm.dialog_rows(turns, group, bos=BOS, sep=SEP, eos=EOS, max_len=128)[-1]  # 3 compressed turns
        arr = ccm.to_arrays([row], len(row.tokens) + 3, PAD)  # right padding too
        logits = ccm.ccm_forward_logits(params, tr, cfg, spec, jnp.asarray(arr["tokens"]), jnp.asarray(arr["valid"]))
        one_pass.append(float(ccm.output_nll(logits, jnp.asarray(arr["tokens"]), jnp.asarray(arr["weights"]))))
        one_pass_logits.append(np.asarray(logits[0, row.loss_start - 1 : len(row.tokens) - 1]))
    mem = ccm.CompressedMemory.empty(cfg, 2)
    for t in range(3):  # both conversations at once, turns of different lengths
        mem = ccm.update(params, tr, cfg, spec, mem, [c[t] for c in convs], bos=BOS, sep=SEP, pad=PAD)
    entries = (n_tok if spec.merge else 3 * n_tok) + sink
    assert mem.entries == entries and mem.turns == 3
    assert mem.nbytes == 2 * cfg.num_layers * 2 * entries * cfg.num_kv_heads * cfg.head_dim * 4
    recurrent = ccm.score(params, tr, cfg, spec, mem, [c[3] for c in convs], [c[4] for c in convs], sep=SEP,
                          eos=EOS, pad=PAD)
    np.testing.assert_allclose(recurrent, one_pass, rtol=1e-4, atol=1e-5)
    for i, c in enumerate(convs):  # the logits themselves, at the output positions (each row alone, no padding)
        sub = ccm.CompressedMemory(mem.k[:, i : i + 1], mem.v[:, i : i + 1], mem.text_pos[i : i + 1], mem.turns)
        row = [SEP, *c[3], SEP, *c[4], EOS]
        pos = sub.text_pos[:, None] + jnp.arange(len(row))[None]
        logits, _ = _run(params, tr, cfg, spec, sub.k, sub.v, jnp.asarray([row]), jnp.ones((1, len(row)), bool),
                         jnp.zeros((1, len(row)), bool), pos)
        np.testing.assert_allclose(np.asarray(logits[0, len(c[3]) + 1 : -1]), one_pass_logits[i], atol=1e-4)


def test_loss_trains_only_the_ccm_trees(tiny_llama):
    cfg, params = tiny_llama
    spec = _spec()
    comp = list(range(cfg.vocab_size, cfg.vocab_size + spec.n_tok))
    rows = ccm.dialog_rows([[10, 11], [20, 21, 22], [30], [40, 41]], comp, bos=BOS, sep=SEP, eos=EOS, max_len=64)
    batch = {k: jnp.asarray(v) for k, v in ccm.to_arrays(rows, 20, PAD).items()}
    tr = ccm.init_trainable(params, cfg, spec, jax.random.key(0))
    loss_fn = ccm.make_loss_fn(cfg, spec)
    (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(tr, {"base": params}, batch, jax.random.key(1))
    assert np.isfinite(float(loss)) and set(g) == {"comp", "lora"}
    assert float(jnp.abs(g["comp"]).max()) > 0
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g["lora"])) > 0


@pytest.mark.parametrize("attn_type", ["concat_recur", "merge_recur"])
def test_greedy_generation_from_memory_matches_the_one_pass_argmax(tiny_llama, attn_type):
    cfg, params = tiny_llama
    spec = _spec(attn_type=attn_type)
    tr = _trainable(params, cfg, spec)
    comp = ccm.group_ids(cfg, spec)
    convs = [[[10, 11, 12], [20, 21], [30, 31, 32, 33]], [[40], [50, 51, 52, 53], [60, 61]]]
    mem = ccm.CompressedMemory.empty(cfg, 2)
    for t in range(2):
        mem = ccm.update(params, tr, cfg, spec, mem, [c[t] for c in convs], bos=BOS, sep=SEP, pad=PAD)
    prompts = [[SEP, *c[2], SEP] for c in convs]
    got = ccm.generate(params, cfg, mem, prompts, eos=-1, pad=PAD, max_new_tokens=4)
    for c, g in zip(convs, got):
        row = [BOS, *c[0], *comp, SEP, *c[1], *comp, SEP, *c[2], SEP]
        want = []
        for _ in range(4):  # greedy under the training mask, one token at a time
            seq = jnp.asarray([row + want])
            logits = ccm.ccm_forward_logits(params, tr, cfg, spec, seq, jnp.ones_like(seq, bool))
            want.append(int(jnp.argmax(logits[0, -1])))
        assert g == want


def test_saved_trees_reload_with_their_spec_and_give_the_same_logits(tiny_llama, tmp_path):
    from sycojax.adapters.export import save_tree  # noqa: PLC0415
    from sycojax.methods.ccm.run import CCMError, load_ccm  # noqa: PLC0415

    cfg, params = tiny_llama
    spec = _spec(n_tok=2)
    tr = _trainable(params, cfg, spec)
    meta = {"method": "ccm", "model": "tiny", "n_tok": 2, "attn_type": "concat_recur", "lora_rank": 8,
            "lora_alpha": 16.0, "lora_targets": ["q", "k", "v", "o"]}
    save_tree(jax.device_get(tr), tmp_path / "adapter", meta)
    back, spec2, meta2 = load_ccm(tmp_path, cfg)
    assert spec2 == spec and meta2["model"] == "tiny"
    comp = list(range(cfg.vocab_size, cfg.vocab_size + 2))
    row = ccm.dialog_rows([[10, 11], [20, 21, 22], [30]], comp, bos=BOS, sep=SEP, eos=EOS, max_len=64)[-1]
    arr = ccm.to_arrays([row], len(row.tokens), PAD)
    t, v = jnp.asarray(arr["tokens"]), jnp.asarray(arr["valid"])
    np.testing.assert_array_equal(np.asarray(ccm.ccm_forward_logits(params, tr, cfg, spec, t, v)),
                                  np.asarray(ccm.ccm_forward_logits(params, back, cfg, spec2, t, v)))
    with pytest.raises(CCMError, match="trained with n_tok=2, not 4"):
        load_ccm(tmp_path, cfg, n_tok=4)
    with pytest.raises(CCMError, match="trained with attn_type='concat_recur', not 'merge_recur'"):
        load_ccm(tmp_path, cfg, attn_type="merge_recur")
    with pytest.raises(CCMError, match="no adapter/ in it"):
        load_ccm(tmp_path / "nope", cfg)
