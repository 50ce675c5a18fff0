"""CCM-merge (merge_recur): the running-mean weights, the one-pass forward against the model's, the fixed-size
memory, checkpoints that know their attention type, and a loss that trains. (Recurrent = one pass: test_ccm.py.)"""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sycojax.adapters.export import save_tree
from sycojax.masks import ccm_mask, comp_flags, skip_positions
from sycojax.methods import ccm
from sycojax.methods.ccm.run import CCMError, load_ccm, spec_from_config
from sycojax.models import forward
from sycojax.train import ArrayIterator, train

BOS, EOS, SEP, PAD = 1, 2, 5, 0
C = 50  # first COMP id in the hand-written cases


def _trainable(params, cfg, spec, seed=0):
    tr = ccm.init_trainable(params, cfg, spec, jax.random.key(seed))
    tr["lora"] = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(seed + 1), x.shape), tr["lora"])
    return tr


def test_running_mean_weights_hand_written():
    # n_tok = 1: [BOS a C S SEP b C S SEP d]; S of turn t averages the t COMP tokens at or before it
    w = np.asarray(ccm.running_mean_weights(jnp.asarray([[BOS, 7, C, C + 1, SEP, 8, C, C + 1, SEP, 9]]), C, 1))[0]
    want = np.zeros((10, 10))
    want[3, 2] = 1.0
    want[7, [2, 6]] = 0.5
    np.testing.assert_array_equal(w, want)
    # n_tok = 2: [a C0 C1 S0 S1 b C0 C1 S0 S1]; slot j averages COMP_j only
    w = np.asarray(ccm.running_mean_weights(jnp.asarray([[7, C, C + 1, C + 2, C + 3, 8, C, C + 1, C + 2, C + 3]]),
                                            C, 2))[0]
    want = np.zeros((10, 10))
    want[3, 1], want[4, 2] = 1.0, 1.0
    want[8, [1, 6]], want[9, [2, 7]] = 0.5, 0.5
    np.testing.assert_array_equal(w, want)


def test_forward_merge_is_the_models_forward_where_there_is_no_sum_token(tiny_llama):
    """The merge pass is the model's LLaMA block plus the SUM K/V replacement, nothing else."""
    cfg, params = tiny_llama
    spec = ccm.CCMSpec(n_tok=2)
    tr = _trainable(params, cfg, spec)
    v = cfg.vocab_size
    tokens = jnp.asarray([[BOS, 10, 11, v, v + 1, SEP, 20, 21, v, v + 1, SEP, 30, PAD]])
    valid = tokens != PAD
    flags = comp_flags(tokens, v, 2)
    kw = {"cfg": cfg, "positions": skip_positions(flags.is_comp, valid, 2), "mask": ccm_mask(tokens, v, 2, valid),
          "adapters": ccm.adapters(tr, spec, flags.is_comp)}
    np.testing.assert_allclose(np.asarray(ccm.forward_merge(params, tokens, first_id=v, n_tok=2, **kw)),
                               np.asarray(forward(params, tokens, **kw).logits), atol=1e-5)


def test_merge_memory_is_n_tok_entries_whatever_the_turns_and_concat_grows(tiny_llama):
    cfg, params = tiny_llama
    merge, concat = ccm.CCMSpec(n_tok=2, attn_type="merge_recur"), ccm.CCMSpec(n_tok=2)
    tr = _trainable(params, cfg, merge)
    tr_concat = {"comp": tr["comp"], "lora": tr["lora"]}  # the same COMP rows and LoRA
    turns = [[10, 11, 12], [20], [30, 31], [40, 41, 42, 43], [50, 51]]
    mem_m, mem_c = ccm.CompressedMemory.empty(cfg, 1), ccm.CompressedMemory.empty(cfg, 1)
    sizes_m, sizes_c, bytes_m = [], [], []
    for i, t in enumerate(turns):
        mem_m = ccm.update(params, tr, cfg, merge, mem_m, [t], bos=BOS, sep=SEP)
        mem_c = ccm.update(params, tr_concat, cfg, concat, mem_c, [t], bos=BOS, sep=SEP)
        sizes_m.append(mem_m.entries)
        sizes_c.append(mem_c.entries)
        bytes_m.append(mem_m.nbytes)
        if i == 1:  # turn 2 compresses over one COMP group in both: merge keeps the mean of concat's two groups
            np.testing.assert_allclose(np.asarray(mem_m.k), np.asarray(mem_c.k[:, :, :2] + mem_c.k[:, :, 2:]) / 2,
                                       atol=1e-6)
            np.testing.assert_allclose(np.asarray(mem_m.v), np.asarray(mem_c.v[:, :, :2] + mem_c.v[:, :, 2:]) / 2,
                                       atol=1e-6)
    assert sizes_m == [2] * 5 and len(set(bytes_m)) == 1
    assert sizes_c == [2, 4, 6, 8, 10]
    assert int(mem_m.text_pos[0]) == int(mem_c.text_pos[0]) == 1 + sum(len(t) for t in turns) + 4  # BOS, 4 SEP


def test_a_merge_checkpoint_reloads_as_merge_and_refuses_concat(tiny_llama, tmp_path):
    cfg, params = tiny_llama
    spec = ccm.CCMSpec(n_tok=2, attn_type="merge_recur")
    tr = _trainable(params, cfg, spec)
    assert set(tr) == {"comp", "sum", "lora"} and tr["sum"].shape == (2, cfg.hidden_size)
    meta = {"method": "ccm", "model": "tiny", "n_tok": 2, "attn_type": "merge_recur", "lora_rank": 8,
            "lora_alpha": 16.0, "lora_targets": ["q", "k", "v", "o"]}
    save_tree(jax.device_get(tr), tmp_path / "adapter", meta)
    back, spec2, _ = load_ccm(tmp_path, cfg)
    assert spec2 == spec
    row = ccm.dialog_rows([[10, 11], [20, 21, 22], [30]], ccm.group_ids(cfg, spec), bos=BOS, sep=SEP, eos=EOS,
                          max_len=64)[-1]
    t = jnp.asarray([row.tokens])
    np.testing.assert_array_equal(np.asarray(ccm.ccm_forward_logits(params, tr, cfg, spec, t, t != PAD)),
                                  np.asarray(ccm.ccm_forward_logits(params, back, cfg, spec2, t, t != PAD)))
    with pytest.raises(CCMError) as e:
        load_ccm(tmp_path, cfg, attn_type="concat_recur")
    assert str(e.value) == (f"--ccm {tmp_path} was trained with attn_type='merge_recur', not 'concat_recur'; drop "
                            "the flag or train a model with it")
    save_tree(jax.device_get(tr), tmp_path / "lying" / "adapter", dict(meta, attn_type="concat_recur"))
    with pytest.raises(CCMError, match="were trained with attn_type='merge_recur'; attn_type='concat_recur' needs"):
        load_ccm(tmp_path / "lying", cfg)  # the trees say merge whatever the metadata says
    with pytest.raises(ValueError, match="were trained with attn_type='merge_recur'"):  # merge trees, concat run
        ccm.update(params, back, cfg, ccm.CCMSpec(n_tok=2), ccm.CompressedMemory.empty(cfg, 1), [[10]], bos=BOS,
                   sep=SEP)
    with pytest.raises(ValueError, match="were trained with attn_type='concat_recur'"):  # concat trees, merge run
        ccm.ccm_forward_logits(params, {"comp": tr["comp"], "lora": tr["lora"]}, cfg, spec, t, t != PAD)


def test_merge_trains_through_the_one_loop_and_its_loss_decreases(tiny_llama, tmp_path):
    """configs/ccm.py with attn_type=merge_recur, the shared `train` loop, a few steps on a tiny model."""
    cfg, params = tiny_llama
    c = _config()
    c.method.attn_type = "merge_recur"
    spec = spec_from_config(c)
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(8):
        turns = [list(rng.integers(6, 100, size=int(rng.integers(2, 5)))) for _ in range(5)]
        rows += ccm.dialog_rows(turns, ccm.group_ids(cfg, spec), bos=BOS, sep=SEP, eos=EOS, max_len=64)
    arrays = ccm.to_arrays(rows, 64, PAD)
    tr0 = ccm.init_trainable(params, cfg, spec, jax.random.key(0))
    loss_fn = ccm.make_loss_fn(cfg, spec)
    batch = {k: jnp.asarray(v[:8]) for k, v in arrays.items()}
    _, g = jax.value_and_grad(loss_fn, has_aux=True)(tr0, {"base": params}, batch, jax.random.key(0))
    assert float(jnp.abs(g["comp"]).max()) > 0
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g["lora"])) > 0
    assert float(jnp.abs(g["sum"]).max()) == 0.0  # SUM rows only mark the slots whose K/V become the running mean
    c.train.num_steps, c.train.batch_size, c.train.eval_every, c.train.log_every = 6, 8, 0, 1
    c.ckpt.every, c.optim.lr = 6, 1e-2
    res = train(loss_fn, tr0, {"base": params}, ArrayIterator(arrays, 8, seed=0), c, str(tmp_path),
                metadata={"attn_type": spec.attn_type})
    losses = [h["loss"] for h in res.history]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.3, losses
    np.testing.assert_array_equal(np.asarray(res.trainable["sum"]), np.asarray(tr0["sum"]))


def _config():
    path = Path(__file__).resolve().parents[2] / "configs" / "ccm.py"
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location("ccm_config", path))
    module.__spec__.loader.exec_module(module)
    return module.get_config()
