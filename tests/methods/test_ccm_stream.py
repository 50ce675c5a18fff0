"""Streaming perplexity at a fixed K/V budget (sliding window, StreamingLLM, CCM) on tiny random models."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sycojax.data.sources import EmptyDatasetError
from sycojax.methods import ccm
from sycojax.methods.ccm import stream as S
from sycojax.methods.ccm import stream_run as R
from sycojax.models import init_params
from sycojax.models import layers as L

FIXTURES = "tests/fixtures/data"


def _trainable(params, cfg, spec, seed=0):
    tr = ccm.init_trainable(params, cfg, spec, jax.random.key(seed))
    # B = 0 at init would hide the gate: give the LoRA a real effect
    tr["lora"] = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(seed + 1), x.shape), tr["lora"])
    return tr


def _streams(cfg, n=2, length=65, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, cfg.vocab_size, size=(n, length)).astype(np.int32)
    tokens[:, 0] = 1  # BOS
    return tokens


def test_with_a_budget_above_the_stream_every_method_is_full_context(tiny_llama):
    cfg, params = tiny_llama
    tokens = _streams(cfg)
    spec = ccm.CCMSpec(n_tok=2)
    full = S.stream_nll("full", params, cfg, tokens, budget=0, chunk=16).nll
    assert full.shape == (2, 64)
    for method, kw in (("sliding", {}), ("streaming_llm", {}), ("streaming_llm", {"recompute": True}),
                       ("streaming_llm", {"positions": "absolute"}),
                       ("ccm", {"trainable": _trainable(params, cfg, spec), "spec": spec}),
                       ("ccm", {"trainable": _trainable(params, cfg, spec), "spec": spec, "positions": "cache"})):
        res = S.stream_nll(method, params, cfg, tokens, budget=80, chunk=16, **kw)
        np.testing.assert_allclose(res.nll, full, atol=2e-5, err_msg=f"{method} {kw}")
        assert max(res.memory) == 0  # nothing was compressed


def test_windows_differ_from_full_once_the_budget_binds(tiny_llama):
    cfg, params = tiny_llama
    tokens = _streams(cfg)
    full = S.stream_nll("full", params, cfg, tokens, budget=0, chunk=16).nll
    res = S.stream_nll("sliding", params, cfg, tokens, budget=20, chunk=16)
    np.testing.assert_allclose(res.nll[:, :32], full[:, :32], atol=2e-5)  # chunks 0, 1: whole prefix within budget
    assert not np.allclose(res.nll[:, 48:], full[:, 48:], atol=1e-3)
    assert max(res.entries) == 20


def test_rerotation_is_exact_on_a_one_layer_model(tiny_llama):
    """One layer: a token's K/V depend on itself and its position only, so StreamingLLM's kept K/V, re-rotated to
    their cache index, must give exactly the window re-encoded from scratch."""
    cfg = dataclasses.replace(tiny_llama[0], num_layers=1)
    params = init_params(cfg, jax.random.key(0), std=0.1)
    tokens = _streams(cfg, length=97)
    cached = S.stream_nll("streaming_llm", params, cfg, tokens, budget=24, chunk=16)
    again = S.stream_nll("streaming_llm", params, cfg, tokens, budget=24, chunk=16, recompute=True)
    np.testing.assert_allclose(cached.nll, again.nll, atol=5e-5)
    assert cached.entries == again.entries == [16, 24, 24, 24, 24, 24]


def test_rotate_moves_a_key_to_another_position(tiny_llama):
    cfg, _ = tiny_llama
    k = jax.random.normal(jax.random.key(0), (1, 1, 5, cfg.num_kv_heads, cfg.head_dim))
    at = lambda p: L.apply_rope(k[0], *L.rope_cos_sin(cfg, jnp.asarray([p])))[None]
    p, q = np.array([0, 3, 7, 50, 200]), np.array([4, 0, 9, 2, 201])
    np.testing.assert_allclose(S._rotate(cfg, at(p), jnp.asarray(q - p)), at(q), atol=1e-5)


@pytest.mark.parametrize("positions", ["absolute", "cache"])
def test_ccm_memory_and_state_stay_within_the_budget(tiny_llama, positions):
    cfg, params = tiny_llama
    spec = ccm.CCMSpec(n_tok=2)
    tokens = _streams(cfg, length=129)
    res = S.stream_nll("ccm", params, cfg, tokens, budget=30, chunk=16, trainable=_trainable(params, cfg, spec),
                       spec=spec, comp_size=8, max_comp=4, positions=positions)
    assert max(res.entries) <= 30 and max(res.memory) == 4  # 1 sink + <= 4 COMP entries + recent tokens
    assert res.memory[0] == 0 and res.entries[0] == 16
    assert np.isfinite(res.nll).all() and res.nll.shape == (2, 128)
    plain = S.stream_nll("streaming_llm", params, cfg, tokens, budget=30, chunk=16, sinks=1, positions=positions)
    np.testing.assert_allclose(res.nll[:, :32], plain.nll[:, :32], atol=2e-5)  # no compression before chunk 2
    assert not np.allclose(res.nll[:, 32:], plain.nll[:, 32:], atol=1e-4)  # then the memory is read


def test_ccm_first_compression_is_memory_update(tiny_llama):
    """Chunk 0 overflows the budget: its oldest 4 tokens after BOS are compressed over [BOS, those tokens], whose
    K/V chunk 0 computed causally: the same computation as `memory.update` on the turn `t1..t4`."""
    cfg, params = tiny_llama
    spec = ccm.CCMSpec(n_tok=2)
    tr = _trainable(params, cfg, spec)
    tokens = _streams(cfg, length=17)
    seen = {}
    comp = S._Compressor(params, tr, cfg, spec, comp_size=4, max_comp=2, positions="absolute")
    S.cached_nll(params, cfg, tokens, budget=7, chunk=8, sinks=1, positions="absolute", compressor=comp,
                 name="ccm", on_state=lambda c, k, v, sl: seen.setdefault(c, (k, v, sl)))
    k, _, sl = seen[0]
    assert list(sl.kind[:6]) == [S.SINK, S.COMP, S.COMP, S.RAW, S.RAW, S.RAW] and sl.count == 6
    assert list(sl.pos[:6]) == [0, 5, 6, 5, 6, 7]  # COMP_j at the last compressed position + j ("skip")
    sink_spec = dataclasses.replace(spec, sink=True)
    mem = ccm.update(params, tr, cfg, sink_spec, ccm.CompressedMemory.empty(cfg, 2), [list(r[1:5]) for r in tokens],
                     bos=1, sep=5)
    np.testing.assert_allclose(np.asarray(k[:, :, :3]), np.asarray(mem.k), atol=2e-5)


def test_ccm_merge_keeps_n_tok_entries(tiny_llama):
    cfg, params = tiny_llama
    spec = ccm.CCMSpec(n_tok=2, attn_type="merge_recur", sink=True)
    tokens = _streams(cfg, length=129)
    res = S.stream_nll("ccm", params, cfg, tokens, budget=30, chunk=16, trainable=_trainable(params, cfg, spec),
                       spec=spec, comp_size=8)
    assert max(res.memory) == 2 and max(res.entries) <= 30 and np.isfinite(res.nll).all()


def test_bad_settings_are_refused_with_the_reason(tiny_llama):
    cfg, params = tiny_llama
    spec = ccm.CCMSpec(n_tok=2)
    tr = _trainable(params, cfg, spec)
    tokens = _streams(cfg)
    with pytest.raises(S.StreamError, match="budget 12 < 13"):
        S.stream_nll("ccm", params, cfg, tokens, budget=12, chunk=16, trainable=tr, spec=spec, comp_size=4)
    with pytest.raises(S.StreamError, match="n_chunks"):
        S.stream_nll("sliding", params, cfg, tokens[:, :60], budget=12, chunk=16)
    with pytest.raises(S.StreamError, match="multiple of n_tok"):
        S.stream_nll("ccm", params, cfg, tokens, budget=40, chunk=16, trainable=tr, spec=spec, max_comp=3)
    with pytest.raises(S.StreamError, match="unknown method"):
        S.stream_nll("h2o", params, cfg, tokens, budget=40, chunk=16)
    with pytest.raises(S.StreamError, match="needs the trained CCM trees"):
        S.stream_nll("ccm", params, cfg, tokens, budget=40, chunk=16)


def test_streams_from_the_fixtures(char_tok):
    s = S.sharegpt_streams(char_tok, 2, 129, root=FIXTURES)
    assert s.tokens.shape == (2, 129) and (s.tokens[:, 0] == 1).all() and len(set(s.ids)) == 2
    later = S.sharegpt_streams(char_tok, 1, 129, skip=1, root=FIXTURES)
    assert later.ids == s.ids[1:] and "ShareGPT" in s.source
    with pytest.raises(EmptyDatasetError):
        S.sharegpt_streams(char_tok, 1000, 129, root=FIXTURES)


def test_summary_reports_token_weighted_means():
    r = S.StreamResult("sliding", np.array([[1.0, 3.0], [2.0, 2.0]]), [2], [0])
    out = S.summarize([r], chunk=1)["sliding"]
    assert out["nll"] == 2.0 and out["nll_by_chunk"] == [1.5, 2.5] and out["max_entries"] == 2
    assert out["nll_by_doc"] == [2.0, 2.0]



def test_one_pass_layout_is_the_streaming_computation(tiny_llama):
    """The streaming CCM (absolute positions) unrolled into one sequence under `stream_layout`'s mask gives the
    same NLL as the recurrent `cached_nll`, so training on the layout trains what streaming evaluates."""
    cfg, params = tiny_llama
    spec = ccm.CCMSpec(n_tok=2)
    tr = _trainable(params, cfg, spec)
    tokens = _streams(cfg, length=129)
    kw = {"budget": 30, "chunk": 16, "comp_size": 8, "max_comp": 4}
    rec = S.stream_nll("ccm", params, cfg, tokens, trainable=tr, spec=spec, positions="absolute", **kw)
    layout = R.stream_layout(129, n_tok=2, **kw)
    assert (layout.comp_j >= 0).sum() > 0 and layout.memory.max() == 4
    rows = layout.rows(tokens, cfg, min_memory=0)
    got = np.asarray(R.layout_nll(params, tr, cfg, spec, layout, rows))
    text = np.flatnonzero((layout.tok >= 0) & (layout.tok < 128))
    np.testing.assert_allclose(got[:, text], rec.nll[:, layout.tok[text]], atol=3e-5)


def test_layout_loss_trains_only_through_the_memory(tiny_llama):
    cfg, params = tiny_llama
    spec = ccm.CCMSpec(n_tok=2)
    layout = R.stream_layout(65, budget=20, chunk=16, n_tok=2, comp_size=8, max_comp=4)
    rows = layout.rows(_streams(cfg, length=65), cfg)
    scored = np.flatnonzero(rows["weights"][0] > 0)
    assert len(scored) and (layout.memory[scored] >= 1).all()
    loss_fn = R.make_layout_loss(cfg, spec, layout, scored)
    tr = ccm.init_trainable(params, cfg, spec, jax.random.key(0))
    batch = {k: jnp.asarray(rows[k]) for k in ("tokens", "targets")}
    (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(tr, {"base": params}, batch, None)
    assert np.isfinite(float(loss)) and float(jnp.abs(g["comp"]).sum()) > 0


def test_run_refuses_bad_settings_before_loading_anything():
    with pytest.raises(S.StreamError, match="unknown method 'h2o'"):
        R.run_stream(ccm_workdir=None, methods=["h2o"])
    with pytest.raises(S.StreamError, match="multiple of chunk=64"):
        R.run_stream(ccm_workdir=None, methods=["sliding"], doc_tokens=100)
    with pytest.raises(S.StreamError, match="budget 50 < 73"):
        R.run_stream(ccm_workdir=None, methods=["ccm"], budget=50)
    with pytest.raises(S.StreamError, match="source='pg19'"):
        R.run_stream(ccm_workdir=None, methods=["sliding"], source="pg19")
