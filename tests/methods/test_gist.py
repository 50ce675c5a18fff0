"""Gisting method: trees, the masked completion loss, data, a training run, loading, evaluation, bad input."""

import dataclasses
import importlib.util
import json
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from support.chat_tokenizer import CharChatTokenizer

from sycojax.adapters import LoraConfig
from sycojax.data import IGNORE_INDEX, EmptyDatasetError, PromptTooLongError
from sycojax.masks import gist_mask, positions_from_valid
from sycojax.methods import gist as G
from sycojax.models import forward


def _load_config_module():
    path = Path(__file__).resolve().parents[2] / "configs" / "gist.py"
    spec = importlib.util.spec_from_file_location("configs_gist", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


get_config = _load_config_module().get_config
_forward = jax.jit(forward, static_argnames="cfg")
SPEC = G.GistSpec(num_gist_tokens=2, lora=LoraConfig(rank=4, alpha=8.0), max_length=96)


class Tok(CharChatTokenizer):
    """The char-level chat tokenizer with a size (the gist format checks that gist ids lie past it) and HF's
    `add_generation_prompt=False` default."""

    def __len__(self):
        return self.vocab_size

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        return super().apply_chat_template(messages, tokenize, add_generation_prompt)


def _record(i, output=True):
    return {"instruction": f"Repeat the word {'abcde'[i % 5] * (1 + i % 3)}", "input": "x" * (i % 4),
            "output": f"word {i}" if output else None, "source": f"t:{i}"}


SPLITS = {
    "train": [_record(i) for i in range(12)],
    "val_seen": [_record(i) for i in range(20, 24)],
    "val_unseen": [_record(i) for i in range(30, 34)],
    "val_human": [_record(40), _record(41, output=False), _record(42, output=False)],
}


@pytest.fixture(scope="module")
def tok():
    return Tok(101)


def _trained_like(params, cfg, spec, seed):
    """A trainable tree with non-zero LoRA B and a random gist row (so conditions really differ)."""
    tr = G.init_trainable(params, cfg, spec, jax.random.key(seed))
    rs = np.random.RandomState(seed)  # numpy noise: no per-shape compilation
    return jax.tree.map(lambda x: jnp.asarray(np.asarray(x) + 0.05 * rs.standard_normal(x.shape), jnp.float32), tr)


def _batch(tok, cfg, spec, records, length):
    ex, _ = G.encode_records(records, tok, spec, cfg.vocab_size)
    return {k: jnp.asarray(v) for k, v in G.batch_arrays(ex, pad_id=0, length=length).items()}, ex


def test_init_trainable(tiny_llama):
    cfg, params = tiny_llama
    tr = G.init_trainable(params, cfg, SPEC, jax.random.key(0))
    np.testing.assert_allclose(tr["gist"], params["model"]["embed_tokens"]["weight"].mean(0, keepdims=True), atol=1e-6)
    assert tr["gist"].shape == (1, cfg.hidden_size)
    assert set(tr["lora"]["model"]["layers"]["self_attn"]) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    full = G.init_trainable(params, cfg, dataclasses.replace(SPEC, train_base="full"), jax.random.key(0))
    assert set(full) == {"gist", "base"}
    tokens = jnp.arange(3, 13)[None]
    valid = jnp.ones_like(tokens, bool)
    p, a = G.split_trees(params, tr, SPEC)
    mask = gist_mask(tokens, cfg.vocab_size, valid)
    base = _forward(params, tokens, cfg=cfg, positions=positions_from_valid(valid), mask=mask).logits
    fresh = _forward(p, tokens, cfg=cfg, positions=positions_from_valid(valid), mask=mask, adapters=a).logits
    np.testing.assert_allclose(fresh, base, atol=1e-6)  # LoRA B = 0: the base model, untouched


def test_loss_is_masked_completion_ce_and_left_padding_invariant(tiny_llama, tok):
    cfg, params = tiny_llama
    tr = _trained_like(params, cfg, SPEC, 1)
    loss_fn = jax.jit(G.make_loss_fn(cfg, SPEC, cfg.vocab_size))
    batch, ex = _batch(tok, cfg, SPEC, SPLITS["train"][:2], 80)
    loss, metrics = loss_fn(tr, {"base": params}, batch, None)
    # by hand: forward under the gist mask, CE of each completion token from the position before it
    p, a = G.split_trees(params, tr, SPEC)
    mask = gist_mask(batch["tokens"], cfg.vocab_size, batch["valid"], "gist")
    logits = _forward(p, batch["tokens"], cfg=cfg, positions=positions_from_valid(batch["valid"]), mask=mask,
                      adapters=a).logits
    logp = jax.nn.log_softmax(logits, -1)
    nll = []
    for b, e in enumerate(ex):
        start = 80 - len(e.tokens) + len(e.prompt)
        nll += [-float(logp[b, t - 1, int(batch["tokens"][b, t])]) for t in range(start, 80)]
    assert metrics["completion_tokens"] == sum(len(e.completion) for e in ex) == len(nll)
    np.testing.assert_allclose(loss, np.mean(nll), rtol=1e-5)
    # more left padding: same positions (positions_from_valid), same loss
    longer, _ = _batch(tok, cfg, SPEC, SPLITS["train"][:2], 96)
    np.testing.assert_allclose(loss_fn(tr, {"base": params}, longer, None)[0], loss, rtol=1e-5)


def test_gradient_reaches_gist_only_where_the_mask_lets_it(tiny_llama, tok):
    cfg, params = tiny_llama
    batch, _ = _batch(tok, cfg, SPEC, SPLITS["train"][:2], 80)
    norms = {}
    for condition in ("gist", "neg_control"):
        spec = dataclasses.replace(SPEC, condition=condition)
        tr = _trained_like(params, cfg, spec, 2)
        loss_fn = G.make_loss_fn(cfg, spec, cfg.vocab_size)
        g = jax.jit(jax.grad(lambda t, f=loss_fn: f(t, {"base": params}, batch, None)[0]))(tr)
        norms[condition] = float(jnp.linalg.norm(g["gist"]))
        assert float(jnp.linalg.norm(g["lora"]["model"]["layers"]["mlp"]["down_proj"]["lora_B"])) > 0
    assert norms["gist"] > 1e-6
    assert norms["neg_control"] == 0.0  # nothing after the gist span sees the gist tokens


def test_encode_records_and_arrays(tiny_llama, tok):
    cfg, _ = tiny_llama
    long = {"instruction": "y" * 80, "input": "", "output": "z", "source": "long"}
    ex, kept = G.encode_records([_record(0), long, _record(1)], tok, SPEC, cfg.vocab_size)
    assert kept == [0, 2]
    arrays = G.batch_arrays(ex, pad_id=0, length=SPEC.max_length)
    assert arrays["tokens"].shape == (2, 96) and arrays["num_tokens"].tolist() == [len(e.tokens) for e in ex]
    for row, e in zip(range(2), ex):
        lab = arrays["labels"][row]
        assert (lab != IGNORE_INDEX).sum() == len(e.completion)
        assert list(lab[lab != IGNORE_INDEX]) == list(e.completion)
        assert (arrays["tokens"][row] == cfg.vocab_size).sum() == 2  # k gist tokens, id V
    with pytest.raises(PromptTooLongError, match="no room"):
        G.encode_records([long], tok, SPEC, cfg.vocab_size, drop_too_long=False)
    data = G.build_train_data({"train": [_record(0), long], "val_unseen": [_record(3)]}, tok, SPEC, cfg.vocab_size,
                              pad_id=0)
    assert data.num_dropped == 1 and data.arrays["tokens"].shape == (1, 96) and len(data.eval_examples) == 1
    with pytest.raises(PromptTooLongError, match="room for 2 gist token"):
        G.build_train_data({"train": [long]}, tok, SPEC, cfg.vocab_size, pad_id=0)
    with pytest.raises(EmptyDatasetError, match="'train' is empty"):
        G.build_train_data({"train": []}, tok, SPEC, cfg.vocab_size, pad_id=0)


def test_spec_errors():
    with pytest.raises(G.GistError, match="unknown condition"):
        G.GistSpec(condition="gisty")
    with pytest.raises(G.GistError, match="num_gist_tokens must be >= 1"):
        G.GistSpec(num_gist_tokens=0)
    with pytest.raises(G.GistError, match="no room for 9 gist tokens"):
        G.GistSpec(num_gist_tokens=9, max_length=10)


def _config(tmp_path, condition="gist", k=2):
    c = get_config()
    c.method.condition, c.method.num_gist_tokens, c.method.lora_rank, c.method.lora_alpha = condition, k, 4, 8.0
    c.data.max_length, c.data.num_eval_examples = 96, 2
    c.train.batch_size, c.train.num_steps, c.train.log_every, c.train.eval_every = 2, 2, 1, 2
    c.ckpt.every, c.ckpt.async_save = 2, False
    c.logging.progress_bar, c.logging.tensorboard = False, False
    c.mesh.data = 1
    c.workdir = str(tmp_path / f"{condition}_k{k}")
    return c


def _model(tiny_llama):
    cfg, params = tiny_llama
    return cfg, params, types.SimpleNamespace(id="tiny", content_hash="sha256:tiny")


def test_train_run_checkpoint_and_load_run(tiny_llama, tok, tmp_path):
    c = _config(tmp_path)
    report = G.train_run(c, model=_model(tiny_llama), tokenizer=tok, splits=SPLITS, log=lambda s: None)
    assert report["steps"] == 2 and report["train_examples"] == 12 and report["name"] == "gist_2"
    assert [s for s, _ in report["heldout_loss_curve"]] == [0, 2]
    assert json.loads((tmp_path / "gist_k2" / "report.json").read_text())["steps"] == 2
    run = G.load_run(c.workdir)
    assert run.step == 2 and run.spec == G.GistSpec.from_config(c) and run.name == "gist_2"
    assert run.trainable["gist"].shape == (1, tiny_llama[0].hidden_size)
    assert run.metadata["num_gist_tokens"] == 2 and run.metadata["base_hash"] == "sha256:tiny"
    # the checkpoint holds the trained trees: they moved away from the init
    init = G.init_trainable(tiny_llama[1], tiny_llama[0], run.spec, jax.random.key(0))
    assert not np.allclose(run.trainable["gist"], init["gist"])
    with pytest.raises(G.GistError, match="trained with num_gist_tokens=2, not 1"):
        G.load_run(c.workdir, num_gist_tokens=1)
    with pytest.raises(G.GistError, match="condition=gist"):
        G.load_run(c.workdir, condition="pos_control")
    c5 = _config(tmp_path)
    c5.method.num_gist_tokens = 5  # resuming the k=2 run with another k is refused
    with pytest.raises(G.GistError, match="trained with num_gist_tokens=2, this run asks for num_gist_tokens=5"):
        G.train_run(c5, resume=True, model=_model(tiny_llama), tokenizer=tok, splits=SPLITS, log=lambda s: None)


def test_train_run_errors(tiny_llama, tok, tmp_path):
    c = _config(tmp_path)
    c.data.drop_too_long = False
    bad = dict(SPLITS, train=SPLITS["train"] + [{"instruction": "y" * 90, "input": "", "output": "z", "source": "x"}])
    with pytest.raises(PromptTooLongError, match="no room"):
        G.train_run(c, model=_model(tiny_llama), tokenizer=tok, splits=bad, log=lambda s: None)
    with pytest.raises(EmptyDatasetError):
        G.train_run(_config(tmp_path), model=_model(tiny_llama), tokenizer=tok, splits=dict(SPLITS, train=[]))


def _run(tiny_llama, condition, k, seed):
    cfg, params = tiny_llama
    c = get_config()
    c.method.condition, c.method.num_gist_tokens, c.method.lora_rank, c.method.lora_alpha = condition, k, 4, 8.0
    c.data.max_length = 96
    spec = G.GistSpec.from_config(c)
    tr = jax.tree.map(np.asarray, _trained_like(params, cfg, spec, seed))
    meta = {"method": "gist", "base_hash": "sha256:tiny", "num_gist_tokens": k, "condition": condition}
    return G.GistRun(f"/runs/{spec.name}", 1, spec, json.loads(c.to_json()), meta, tr)


def test_evaluate_table_efficiency_and_errors(tiny_llama, tok):
    runs = [_run(tiny_llama, "pos_control", 2, 3), _run(tiny_llama, "gist", 2, 4),
            _run(tiny_llama, "neg_control", 2, 6)]
    kw = {"model": _model(tiny_llama), "tokenizer": tok, "data_splits": SPLITS, "max_new_tokens": 3, "batch_size": 2,
          "timing_repeats": 1, "log": lambda s: None}
    res = G.evaluate(runs, splits=("unseen", "human"), num_examples=3, **kw)
    table = res["eval"]
    assert set(table) == {"unseen", "human"}
    assert set(table["unseen"]) == {"pos_control", "gist_2", "neg_control"}
    assert table["unseen"]["pos_control"]["rougeL_vs_pos"] == 100.0
    assert table["human"]["gist_2"]["n"] == 3 and table["human"]["gist_2"]["n_ref"] == 1
    for split in table.values():
        for m in split.values():
            assert set(m) == {"rougeL", "rougeL_vs_pos", "n", "n_ref", "loss"} and m["loss"] > 0
    # the table's loss is the teacher-forced completion loss under that run's own mask
    run = runs[2]
    p, a = G.serving_trees(tiny_llama[1], run.trainable, tiny_llama[0], run.spec)
    ex, _ = G.encode_records(SPLITS["val_unseen"][:3], tok, run.spec, tiny_llama[0].vocab_size)
    want = G.mean_completion_loss(p, a, tiny_llama[0], ex, gist_id=101, condition="neg_control", length=96, pad_id=0)
    np.testing.assert_allclose(table["unseen"]["neg_control"]["loss"], want, rtol=1e-5)
    eff = res["efficiency"]
    assert eff["condition"] == "gist_2" and eff["num_gist_tokens"] == 2
    assert 0 < eff["flops"]["prompt_forward_saved_frac"] < 1
    assert eff["kv"]["per_query_with_cache"] < eff["kv"]["per_query_without_cache"]
    assert eff["compression"]["ratio_prefix"] > 1
    assert res["samples"]["unseen"][0]["reference"] == SPLITS["val_unseen"][0]["output"]
    assert len(res["outputs"]["unseen"]) == table["unseen"]["pos_control"]["n"]  # every output, for LoRA rows
    assert res["outputs"]["unseen"][:3] == res["samples"]["unseen"]
    text = G.format_table(table).splitlines()
    assert text[0].split()[:3] == ["split", "condition", "n"] and len(text) == 1 + 2 * 3
    assert "-> 2 gist" in G.format_efficiency(eff)

    with pytest.raises(G.GistError, match="same condition"):
        G.evaluate([runs[1], runs[1]], **kw)
    other_split = dataclasses.replace(runs[1], config={**runs[1].config, "data": {**runs[1].config["data"], "seed": 1}})
    with pytest.raises(G.GistError, match="different Alpaca\\+ splits"):
        G.evaluate([runs[0], other_split], **kw)
    with pytest.raises(G.GistError, match="is empty"):
        G.evaluate(runs[:1], splits=("seen",), data_splits=dict(SPLITS, val_seen=[]),
                   **{k: v for k, v in kw.items() if k != "data_splits"})
    with pytest.raises(G.GistError, match="num_examples"):
        G.evaluate(runs[:1], num_examples=0, **kw)


def test_checked_in_config_loads():
    c = get_config()
    spec = G.GistSpec.from_config(c)
    assert (spec.condition, spec.num_gist_tokens, spec.train_base, spec.fmt) == ("gist", 1, "lora", "chatml")
    assert spec.lora == LoraConfig(rank=16, alpha=32.0, targets=("all",))
    assert isinstance(c.data, ml_collections.ConfigDict) and c.optim.lr == 1e-3
