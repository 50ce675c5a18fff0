"""`sycojax.bench.llama_cpp`: the GGUF it writes holds our weights, the cache, llama.cpp's greedy = ours."""

import sys

import gguf
import numpy as np
import pytest

from sycojax.bench import llama_cpp as lc
from sycojax.infer.generate import generate
from sycojax.models.convert import gguf_to_hf_name, qk_heads, tree_to_hf, unpermute_qk
from sycojax.models.loading import load_model

PROMPT = [1, 17, 5, 88, 42, 3, 64, 9, 23, 71, 11]


def _value(reader, key):
    return reader.fields[key].contents()


def _tokenizer_gguf(path, n_tokens):
    """A GGUF holding only tokenizer metadata (what write_gguf copies from a real model's file)."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list([f"t{i}" for i in range(n_tokens)])
    w.add_token_types([1] * n_tokens)
    w.add_token_merges(["t 1", "t 2"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_chat_template("{{ messages }}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_holds_our_weights_and_config(tiny_llama, tmp_path):
    """Every tensor read back (F32, GGUF names, q/k rows un-permuted) equals ours; the llama.* keys are the config's;
    our own loader reads the file back to the same config and params."""
    cfg, params = tiny_llama
    path = lc.write_gguf_params(params, cfg, tmp_path / "tiny.gguf")
    r = gguf.GGUFReader(str(path))
    ours = tree_to_hf(params, cfg)
    got = {}
    for t in r.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.name
        key = gguf_to_hf_name(t.name)
        w = np.asarray(t.data).reshape(tuple(reversed(t.shape.tolist())))
        n = qk_heads(key, cfg)
        got[key] = unpermute_qk(w, n) if n else w
    assert sorted(got) == sorted(ours) and "output.weight" not in {t.name for t in r.tensors}  # tied
    for k in ours:
        np.testing.assert_array_equal(got[k], ours[k], err_msg=k)
    meta = {
        "general.architecture": "llama", "llama.context_length": 256, "llama.embedding_length": 64,
        "llama.block_count": 2, "llama.feed_forward_length": 96, "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": 2, "llama.rope.dimension_count": 16, "llama.vocab_size": 101,
        "llama.rope.freq_base": 10000.0, "general.file_type": 0, "tokenizer.ggml.model": "no_vocab",
    }
    assert {k: _value(r, k) for k in meta} == meta
    assert _value(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(cfg.norm_eps)

    cfg2, params2, _ = load_model(path, cache=False, cache_dir=tmp_path / "cache")
    assert (cfg2.num_layers, cfg2.num_kv_heads, cfg2.head_dim, cfg2.tie_word_embeddings) == (2, 2, 16, True)
    for k, v in tree_to_hf(params2, cfg2).items():
        np.testing.assert_array_equal(v, ours[k], err_msg=k)


def test_tokenizer_metadata_is_copied(tiny_llama, tmp_path):
    cfg, params = tiny_llama
    tok = _tokenizer_gguf(tmp_path / "tok.gguf", cfg.vocab_size)
    r = gguf.GGUFReader(str(lc.write_gguf_params(params, cfg, tmp_path / "m.gguf", tokenizer=tok)))
    src = gguf.GGUFReader(str(tok))
    keys = [k for k in src.fields if k.startswith("tokenizer.")]
    assert len(keys) == 9
    for k in keys:
        assert _value(r, k) == _value(src, k), k
        assert r.fields[k].types == src.fields[k].types, k
    with pytest.raises(ValueError, match="tokenizer=None"):
        lc.write_gguf_params(params, cfg, tmp_path / "bad.gguf", tokenizer=_tokenizer_gguf(tmp_path / "t2.gguf", 7))


def test_cache_is_keyed_and_atomic(tiny_llama, tmp_path, monkeypatch):
    """gguf_for writes <cache>/gguf/<name>-<key>-f32.gguf once; an interrupted write leaves nothing under that name."""
    cfg, params = tiny_llama
    src = lc.write_gguf_params(params, cfg, tmp_path / "src" / "tiny.gguf")
    cache = tmp_path / "cache"
    calls = []
    real = lc.write_gguf_params
    monkeypatch.setattr(lc, "write_gguf_params", lambda *a, **k: calls.append(1) or real(*a, **k))
    p = lc.gguf_for(src, "f32", cache_dir=cache)
    assert p.parent == cache / "gguf" and p.name.startswith("tiny-") and p.name.endswith("-f32.gguf")
    assert lc.gguf_for(src, "f32", cache_dir=cache) == p and calls == [1]  # the second call is a hit
    np.testing.assert_array_equal(gguf.GGUFReader(str(p)).tensors[0].data, gguf.GGUFReader(str(src)).tensors[0].data)

    p.unlink()
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", lambda self, **k: (_ for _ in ()).throw(OSError))
    with pytest.raises(OSError):
        lc.gguf_for(src, "f32", cache_dir=cache)
    assert list((cache / "gguf").iterdir()) == []


def test_unavailable_error_names_the_fix(monkeypatch, tmp_path, tiny_llama):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` raises ImportError
    cfg, params = tiny_llama
    with pytest.raises(lc.LlamaCppUnavailable) as e:
        lc.LlamaCppDecoder(tmp_path / "x.gguf", threads=1)
    assert str(e.value) == lc.INSTALL_HINT and "pip install llama-cpp-python" in str(e.value)
    src = lc.write_gguf_params(params, cfg, tmp_path / "tiny.gguf")
    with pytest.raises(lc.LlamaCppUnavailable):
        lc.gguf_for(src, "q8_0", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "gguf").exists()  # refused before converting anything


def test_llama_cpp_greedy_equals_generate(tiny_llama, tmp_path):
    pytest.importorskip("llama_cpp")
    cfg, params = tiny_llama
    path = lc.write_gguf_params(params, cfg, tmp_path / "tiny.gguf")
    n_new = 24
    ours = generate(params, cfg, [PROMPT], max_new_tokens=n_new, eos_ids=[], pad_id=0).tokens[0].tolist()
    with lc.LlamaCppDecoder(path, threads=1, n_ctx=64) as dec:
        first = dec(PROMPT, n_new)
        again = dec(PROMPT, n_new)  # the KV cache is cleared between calls
        short = dec(PROMPT[:5], 3)
    assert first["tokens"] == ours and again["tokens"] == ours
    assert short["tokens"] == generate(params, cfg, [PROMPT[:5]], max_new_tokens=3, eos_ids=[], pad_id=0
                                       ).tokens[0].tolist()
    assert first["prefill_tok_s"] == pytest.approx(len(PROMPT) / first["prefill_s"])
    assert first["decode_tok_s"] == pytest.approx((n_new - 1) / first["decode_s"])
    assert lc.greedy_decode(path, PROMPT, n_new, threads=1)["tokens"] == ours


def test_q8_0_is_llama_cpps_quantization_of_our_weights(tiny_llama, tmp_path):
    pytest.importorskip("llama_cpp")
    cfg, params = tiny_llama
    f32 = lc.write_gguf_params(params, cfg, tmp_path / "tiny.gguf")
    q8 = lc.quantize(f32, tmp_path / "tiny-q8_0.gguf")
    src = {t.name: t for t in gguf.GGUFReader(str(f32)).tensors}
    for t in gguf.GGUFReader(str(q8)).tensors:
        w = src[t.name].data
        if w.ndim == 1:
            continue  # norms stay F32
        assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0, t.name
        deq = gguf.quants.dequantize(t.data, t.tensor_type).reshape(w.shape)
        step = np.abs(w).reshape(-1, 32).max(axis=1) / 127  # Q8_0: blocks of 32, one scale each
        assert np.all(np.abs(deq - w).reshape(-1, 32) <= step[:, None] * 0.6 + 1e-7), t.name
    assert not list(tmp_path.glob("*.tmp*"))
