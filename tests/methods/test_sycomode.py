"""SyCoMode consolidation on a tiny random model: prompts, teacher targets, loss, KL, export, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sycojax import objectives as obj
from sycojax.adapters import LoraConfig, init_lora
from sycojax.adapters.export import export_peft, load_tree, save_tree
from sycojax.masks import causal_padding, positions_from_valid
from sycojax.methods import consolidate
from sycojax.methods import sycomode as sm
from sycojax.models import Adapters, forward

CONTEXT = "Always answer like a pirate."
QUERIES = ["hello there", "what is two plus two", "name a colour"]


def _logits(params, cfg, ids, adapters=None):
    ids = jnp.asarray([ids])
    valid = jnp.ones(ids.shape, bool)
    return forward(params, ids, cfg=cfg, positions=positions_from_valid(valid), mask=causal_padding(valid),
                   adapters=adapters).logits[0]


def test_prompts_share_the_context_prefix(tiny_llama, char_tok):
    cfg, _ = tiny_llama
    p = sm.build_prompts(char_tok, cfg, CONTEXT, QUERIES, n_mem=2)
    full = [char_tok(char_tok.apply_chat_template([{"role": "system", "content": CONTEXT},
                                                    {"role": "user", "content": q}]))["input_ids"] for q in QUERIES]
    for f, s in zip(full, p.teacher_suffix):
        assert p.teacher_prefix + s == f
    assert len(p.teacher_prefix) > len(CONTEXT)  # the whole system turn is shared
    assert all(s[1:3] == [cfg.vocab_size, cfg.vocab_size + 1] for s in p.student)  # memory after BOS


def test_teacher_targets_are_the_teachers_distribution_at_student_positions(tiny_llama, char_tok):
    cfg, params = tiny_llama
    p = sm.build_prompts(char_tok, cfg, CONTEXT, QUERIES)
    responses = [[5, 6, 7, 2], [8, 9], [10, 11, 12]]
    tgt = sm.teacher_targets(params, cfg, p, responses, topk=5, temperature=2.0, batch_size=2)
    full = sm.teacher_targets(params, cfg, p, responses, topk=5, full=True, batch_size=2)
    for i, r in enumerate(responses):
        teacher_ids = p.teacher_prefix + p.teacher_suffix[i] + r
        ref = np.asarray(_logits(params, cfg, teacher_ids))  # no prefix cache: plain full forward
        start = len(p.teacher_prefix) + len(p.teacher_suffix[i]) - 1
        s0 = len(p.student[i]) - 1
        assert (tgt.resp_weights[i].sum() == len(r)
                and tgt.resp_pos[i, : len(r)].tolist() == list(range(s0, s0 + len(r))))
        assert tgt.tokens[i, s0 + 1 : s0 + 1 + len(r)].tolist() == r
        for j in range(len(r)):
            lp = np.asarray(jax.nn.log_softmax(ref[start + j] / 2.0))
            np.testing.assert_allclose(tgt.topk_logprobs[i, j], np.sort(lp)[::-1][:5], atol=1e-4)
            assert set(tgt.topk_idx[i, j].tolist()) == set(np.argsort(-lp)[:5].tolist())
            np.testing.assert_allclose(full.teacher_logprobs[i, j], jax.nn.log_softmax(ref[start + j]), atol=1e-4)


def test_kl_is_zero_when_student_sees_the_context_and_positive_without(tiny_llama, char_tok):
    cfg, params = tiny_llama
    p = sm.build_prompts(char_tok, cfg, CONTEXT, QUERIES)
    responses = [[5, 6, 7], [8, 9], [10, 11, 12]]
    with_ctx = sm.Prompts(p.teacher_prefix, p.teacher_suffix, [p.teacher_prefix + s for s in p.teacher_suffix])
    t = sm.teacher_targets(params, cfg, with_ctx, responses, topk=5, full=True)
    assert sm.mean_kl(params, Adapters(), cfg, t) == pytest.approx(0.0, abs=1e-5)
    t = sm.teacher_targets(params, cfg, p, responses, topk=5, full=True)
    kl = sm.mean_kl(params, Adapters(), cfg, t)
    ref = []
    for i, r in enumerate(responses):
        tl = _logits(params, cfg, p.teacher_prefix + p.teacher_suffix[i] + r)
        sl = _logits(params, cfg, p.student[i] + r)
        a, b = len(p.teacher_prefix) + len(p.teacher_suffix[i]) - 1, len(p.student[i]) - 1
        ref.append(np.asarray(obj.token_kl(tl[a : a + len(r)], sl[b : b + len(r)])))
    assert kl == pytest.approx(float(np.concatenate(ref).mean()), rel=1e-4) and kl > 1e-3


@pytest.mark.parametrize("batch_size", [2, 4])
def test_packed_mean_kl_equals_unpacked(tiny_llama, char_tok, batch_size):
    cfg, params = tiny_llama
    queries = QUERIES + ["a much longer question about the sea and ships and the weather", "hi"]
    p = sm.build_prompts(char_tok, cfg, CONTEXT, queries)
    responses = [[5, 6, 7, 8], [9, 10, 11], [12, 13], [14, 15, 16, 17, 18], [19]]
    t = sm.teacher_targets(params, cfg, p, responses, topk=5, full=True)
    assert sm.packing_plan(t, batch_size).prefix > 0  # 5 rows: the last batch holds copies (weight 0)
    lora = jax.tree.map(lambda x: x + 0.05, init_lora(params, cfg, LoraConfig(rank=4, alpha=8.0), jax.random.key(1)))
    adapters = Adapters(lora=lora, lora_scale=2.0)
    packed = sm.mean_kl(params, adapters, cfg, t, batch_size=batch_size)
    plain = sm.mean_kl(params, adapters, cfg, t, batch_size=batch_size, pack=False)
    assert packed == pytest.approx(plain, rel=1e-5) and plain > 1e-3


def test_loss_at_init_is_the_topk_cross_entropy_and_training_closes_the_gap(tiny_llama, char_tok, tmp_path):
    cfg, params = tiny_llama
    # k = V: on a near-uniform tiny random model a small top-k would sharpen the student instead
    spec = sm.Spec(method="lora", lora=LoraConfig(rank=4, alpha=8.0), topk=cfg.vocab_size)
    p = sm.build_prompts(char_tok, cfg, CONTEXT, QUERIES)
    responses = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14]]
    tgt = sm.teacher_targets(params, cfg, p, responses, topk=spec.topk)
    trainable = sm.init_trainable(params, cfg, spec, jax.random.key(0))
    batch = {k: jnp.asarray(v) for k, v in tgt.train_arrays().items()}
    loss, _ = sm.make_loss_fn(cfg, spec)(trainable, {"base": params}, batch, None)
    logits = jax.vmap(lambda ids: _logits(params, cfg, ids))(batch["tokens"])
    logits = jnp.take_along_axis(logits, batch["resp_pos"][..., None], axis=1)
    ref = obj.distill_on_topk(logits, batch["topk_idx"], batch["topk_logprobs"], batch["resp_weights"])
    assert float(loss) == pytest.approx(float(ref), rel=1e-4)
    # a few Adam steps on the targets reduce the exact held-out KL on the same rows
    full = sm.teacher_targets(params, cfg, p, responses, topk=spec.topk, full=True)
    import optax

    opt = optax.adam(1e-2)
    state = opt.init(trainable)
    grad_fn = jax.jit(jax.grad(lambda tr: sm.make_loss_fn(cfg, spec)(tr, {"base": params}, batch, None)[0]))
    before = sm.mean_kl(params, Adapters(), cfg, full)
    for _ in range(25):
        updates, state = opt.update(grad_fn(trainable), state)
        trainable = optax.apply_updates(trainable, updates)
    base, adapters = sm.split_trees(params, trainable, spec)
    assert sm.mean_kl(base, adapters, cfg, full) < 0.5 * before


@pytest.mark.parametrize("share_prefix", [True, False])
@pytest.mark.parametrize("method", ["lora", "memory"])
def test_packed_loss_and_gradients_equal_unpacked(tiny_llama, char_tok, method, share_prefix):
    cfg, params = tiny_llama
    spec = sm.Spec(method=method, lora=LoraConfig(rank=4, alpha=8.0), num_mem_tokens=2, mem_init="mean", topk=8,
                   topk_tail=True)
    queries = QUERIES + ["a much longer question about the sea and ships and the weather", "hi"]
    p = sm.build_prompts(char_tok, cfg, CONTEXT, queries, spec.n_mem)
    responses = [[5, 6, 7, 8], [9, 10, 11], [12, 13], [14, 15, 16, 17, 18], [19]]
    tgt = sm.teacher_targets(params, cfg, p, responses, topk=spec.topk)
    arrays = {k: v[:4] for k, v in tgt.train_arrays().items()}  # rows 0-3: two groups of two
    plan = sm.packing_plan(tgt, rows=2, share_prefix=share_prefix)
    assert plan is not None and plan.length < 2 * tgt.tokens.shape[1]
    # every student row begins with the chat template (+ the memory tokens): held once per packed row
    assert (plan.prefix >= 1 + spec.n_mem) if share_prefix else plan.prefix == 0
    np.testing.assert_array_equal(tgt.lengths(), [len(s) + len(r) for s, r in zip(p.student, responses)])
    trainable = sm.init_trainable(params, cfg, spec, jax.random.key(0))
    if method == "lora":  # B = 0 at init would make the LoRA gradients of A zero on both sides
        trainable = jax.tree.map(lambda x: x + 0.05, trainable)
    batch = {k: jnp.asarray(v) for k, v in arrays.items()}

    def value_and_grad(packing):
        f = sm.make_loss_fn(cfg, spec, packing)
        return jax.jit(jax.value_and_grad(lambda tr: f(tr, {"base": params}, batch, None)[0]))(trainable)

    (l0, g0), (l1, g1) = value_and_grad(None), value_and_grad(plan)
    assert float(l1) == pytest.approx(float(l0), rel=1e-5)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-4)
    assert sm.packing_plan(tgt, rows=2, enabled=False) is None


def test_causal_lm_targets_predict_the_context_after_memory_tokens(tiny_llama, char_tok):
    cfg, _ = tiny_llama
    spec = sm.Spec(method="memory", num_mem_tokens=2, objective="causal_language_model", topk=4)
    t = sm.context_lm_targets(char_tok, cfg, "abcd", spec)
    row = t.tokens[0]
    assert row[0] == cfg.bos_token_id and row[1:3].tolist() == [cfg.vocab_size, cfg.vocab_size + 1]
    assert t.resp_pos[0].tolist() == [2, 3, 4, 5]  # the last memory token predicts the first context token
    assert t.topk_idx[0, :, 0].tolist() == row[3:7].tolist()


def test_peft_export_reproduces_student_logits(tiny_llama, tmp_path):
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    import transformers

    from sycojax.models.loading import export_hf

    cfg, params = tiny_llama
    lc = LoraConfig(rank=4, alpha=8.0)
    lora = init_lora(params, cfg, lc, jax.random.key(0))
    lora = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(1), x.shape), lora)
    export_hf(jax.tree.map(np.asarray, params), cfg, tmp_path / "base")
    export_peft(lora, cfg, tmp_path / "peft", rank=lc.rank, alpha=lc.alpha)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", torch_dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(hf, tmp_path / "peft").eval()
    ids = np.random.RandomState(0).randint(3, cfg.vocab_size, (1, 16))
    with torch.no_grad():
        ref = model(torch.tensor(ids)).logits.numpy()[0]
    ours = _logits(params, cfg, ids[0].tolist(), Adapters(lora=lora, lora_scale=lc.scale))
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4)


def test_save_and_load_tree_round_trip(tmp_path):
    tree = {"lora": {"a": np.arange(6, dtype=np.float32).reshape(2, 3)}, "memory": np.ones((2, 4), np.float32)}
    save_tree(tree, tmp_path, {"x": 1})
    back, meta = load_tree(tmp_path)
    np.testing.assert_array_equal(back["lora"]["a"], tree["lora"]["a"]) and meta == {"x": 1}
    with pytest.raises(FileNotFoundError, match="holds no saved adapter"):
        load_tree(tmp_path / "nope")


# --------------------------------------------------------------------------- bad input


def test_empty_context_is_refused(tiny_llama, char_tok):
    cfg, _ = tiny_llama
    with pytest.raises(sm.ConsolidationError, match="context is empty"):
        sm.build_prompts(char_tok, cfg, "   ", QUERIES)
    with pytest.raises(sm.ConsolidationError, match="context is empty"):
        consolidate.read_context("", "")


def test_missing_or_empty_queries_file(tmp_path):
    with pytest.raises(sm.ConsolidationError, match="does not exist"):
        consolidate.read_lines(str(tmp_path / "nope.txt"), "--queries_file")
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(sm.ConsolidationError, match="is empty"):
        consolidate.read_lines(str(tmp_path / "empty.txt"), "--queries_file")


def test_context_longer_than_the_window(tiny_llama, char_tok):
    cfg, _ = tiny_llama
    p = sm.build_prompts(char_tok, cfg, "x" * 400, QUERIES)
    with pytest.raises(sm.ConsolidationError, match="window is 256"):
        sm.check_fits(cfg, p, 16)


def test_workdir_holding_another_runs_adapter_is_not_overwritten(tmp_path):
    save_tree({"m": np.zeros(2, np.float32)}, tmp_path / "adapter", {"fingerprint": "other"})
    before = (tmp_path / "adapter" / "adapter.safetensors").read_bytes()
    with pytest.raises(sm.ConsolidationError, match="another run's adapter"):
        consolidate.check_workdir(tmp_path, "mine", resume=False, overwrite=False)
    with pytest.raises(sm.ConsolidationError, match="another run's adapter"):
        consolidate.check_workdir(tmp_path, "mine", resume=True, overwrite=False)
    assert (tmp_path / "adapter" / "adapter.safetensors").read_bytes() == before
    with pytest.raises(sm.ConsolidationError, match="already holds a run"):
        consolidate.check_workdir(tmp_path, "other", resume=False, overwrite=False)
    consolidate.check_workdir(tmp_path, "other", resume=True, overwrite=False)  # same run: resume is fine


def test_unknown_method_or_objective():
    with pytest.raises(sm.ConsolidationError, match="unknown method 'lorra'"):
        sm.Spec(method="lorra")
    with pytest.raises(sm.ConsolidationError, match="unknown objective"):
        sm.Spec(objective="kl")
    with pytest.raises(sm.ConsolidationError, match="num_mem_tokens >= 1"):
        sm.Spec(method="memory", num_mem_tokens=0)
