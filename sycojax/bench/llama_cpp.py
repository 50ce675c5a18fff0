"""llama.cpp as a benchmark peer (issue 25): our converted weights as a GGUF, llama.cpp's greedy decode.

    path = gguf_for("smollm2-135m-instruct", "q8_0")       # cached F32 GGUF, quantized by llama.cpp
    with LlamaCppDecoder(path, threads=2) as dec:
        out = dec(prompt_ids, new_tokens=64)                # {"tokens", "prefill_s", "decode_tok_s", ...}

**The file.** `write_gguf` writes an F32 GGUF from the param tree `load_model` returns, not a
copy of the source file: llama.cpp then runs exactly the weights sycojax runs (for the embedded
model, the Q4_1 file dequantized to fp32). The tree goes to HF tensors (`convert.tree_to_hf`),
HF names to GGUF names (`convert.hf_to_gguf_name`), q/k rows to the interleaved RoPE layout
(`convert.permute_qk`); norms are F32 too. With tied embeddings no `output.weight` is written
(llama.cpp reuses `token_embd`). The `tokenizer.*` metadata is copied from the source GGUF;
without one (a HF directory, a tiny random model) the file says `tokenizer.ggml.model = no_vocab`
and llama.cpp runs on token ids only, which is all `LlamaCppDecoder` needs.

**Quantized files** come from llama.cpp's own quantizer (`llama_model_quantize`) run on that F32 file.

**Cache.** `gguf_for` keeps `<cache_dir>/gguf/<name>-<key>-<kind>.gguf` (`cache_dir` as in
`loading.default_cache_dir`), `key = sha256(writer version, the source's content hash)[:16]`,
each file written to a temporary name and moved in place with `os.replace`: an interrupted write
leaves no file under the final name.

**Decoding** goes through llama-cpp-python's C bindings, no Python sampler: one `llama_decode` of
the whole prompt, then one per new token, the next token the argmax (numpy, over the logits
buffer viewed in place) of the last row's logits. No EOS stop: exactly `new_tokens` tokens.
Timings: `prefill_s` covers the prompt's decode and the first token; `decode_s` the remaining
`new_tokens - 1` steps, so `decode_tok_s = (new_tokens - 1) / decode_s`. The KV cache is F32 by
default (as sycojax's), `kv_type="f16"` gives llama.cpp's own default.

Without llama-cpp-python every entry point raises `LlamaCppUnavailable`, one line naming the fix.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sycojax.models.config import ModelConfig
from sycojax.models.convert import hf_to_gguf_name, permute_qk, qk_heads, tree_to_hf

WRITER_VERSION = "1"  # bump when write_gguf_params changes what it writes: cached files are keyed on it
KINDS = ("f32", "q8_0")
INSTALL_HINT = (
    "llama-cpp-python is not installed: pip install llama-cpp-python (builds llama.cpp from source: about 8 min on "
    "2 cores; make bench does it)"
)


class LlamaCppUnavailable(RuntimeError):
    """llama-cpp-python cannot be imported; the message is one line naming the fix."""


class LlamaCppError(RuntimeError):
    """llama.cpp refused a file or a call (load, context, decode, quantize)."""


_QUIET = None  # the no-op log callback, once installed


def _llama():
    """The `llama_cpp` module with llama.cpp's logging silenced, or `LlamaCppUnavailable`."""
    try:
        import llama_cpp
    except ImportError:
        raise LlamaCppUnavailable(INSTALL_HINT) from None
    except (OSError, RuntimeError) as e:  # the package is there, its shared library does not load
        raise LlamaCppUnavailable(
            f"llama-cpp-python is installed but its library does not load ({e}): "
            "pip install --force-reinstall --no-cache-dir llama-cpp-python"
        ) from None
    global _QUIET
    if _QUIET is None:
        _QUIET = llama_cpp.llama_log_callback(lambda level, text, user_data: None)  # held: C keeps the pointer
        llama_cpp.llama_log_set(_QUIET, ctypes.c_void_p())
        llama_cpp.llama_backend_init()
    return llama_cpp


# ============================================================================= writing the GGUF
def write_gguf(
    model: str | os.PathLike, path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None
) -> Path:
    """An F32 GGUF of `model` (a name, `.gguf` file or HF directory `load_model` takes) at `path`."""
    from sycojax.models.loading import load_model

    cfg, params, info = load_model(model, cache_dir=cache_dir)
    tokenizer = Path(info.source_path) if info.format == "gguf" else None
    return write_gguf_params(params, cfg, path, tokenizer=tokenizer, name=str(info.id),
                             source_hash=info.content_hash)


def write_gguf_params(
    params: dict,
    cfg: ModelConfig,
    path: str | os.PathLike,
    *,
    tokenizer: str | os.PathLike | None = None,
    name: str = "sycojax",
    source_hash: str | None = None,
) -> Path:
    """Write the LLaMA param tree as an F32 GGUF; `tokenizer`: a GGUF whose `tokenizer.*` metadata is copied."""
    import gguf

    _check_llama(cfg)
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(tmp), "llama")
    try:
        w.add_name(name)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_block_count(cfg.num_layers)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(cfg.num_heads)
        w.add_head_count_kv(cfg.num_kv_heads)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_rope_freq_base(float(cfg.rope_theta))
        w.add_layer_norm_rms_eps(float(cfg.norm_eps))
        w.add_vocab_size(cfg.vocab_size)
        w.add_file_type(gguf.LlamaFileType.ALL_F32)
        if source_hash is not None:
            w.add_string("sycojax.source_hash", source_hash)
        if tokenizer is not None:
            _copy_tokenizer(w, Path(tokenizer), cfg)
        else:
            w.add_tokenizer_model("no_vocab")
        for key, arr in tree_to_hf(params, cfg, np.float32).items():
            n = qk_heads(key, cfg)
            w.add_tensor(hf_to_gguf_name(key), np.ascontiguousarray(permute_qk(arr, n) if n else arr))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, path)
    finally:
        w.close()
        with contextlib.suppress(OSError):
            tmp.unlink()
    return path


def _check_llama(cfg: ModelConfig) -> None:
    if cfg.arch != "llama" or cfg.hidden_act != "silu" or cfg.rope_scaling is not None:
        raise ValueError(
            f"write_gguf writes plain LLaMA models (silu, no RoPE scaling); got arch={cfg.arch!r}, "
            f"hidden_act={cfg.hidden_act!r}, rope_scaling={cfg.rope_scaling!r}."
        )


def _copy_tokenizer(w, src: Path, cfg: ModelConfig) -> None:
    """Every `tokenizer.*` key of the GGUF `src`, value types kept."""
    import gguf

    fields = {k: f for k, f in gguf.GGUFReader(str(src)).fields.items() if k.startswith("tokenizer.")}
    if "tokenizer.ggml.tokens" in fields and len(fields["tokenizer.ggml.tokens"].data) != cfg.vocab_size:
        raise ValueError(
            f"{src} holds a tokenizer of {len(fields['tokenizer.ggml.tokens'].data)} tokens, the model has "
            f"vocab_size={cfg.vocab_size}; llama.cpp needs them equal: pass tokenizer=None (no_vocab)."
        )
    for key, f in fields.items():
        vtype = f.types[0]
        sub = f.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, f.contents(), vtype, sub_type=sub)


def quantize(src: str | os.PathLike, dst: str | os.PathLike, kind: str = "q8_0") -> Path:
    """Quantize the GGUF `src` to `dst` with llama.cpp's own quantizer (written atomically)."""
    ll = _llama()
    ftypes = {"q8_0": ll.LLAMA_FTYPE_MOSTLY_Q8_0}
    if kind not in ftypes:
        raise ValueError(f"quantize kind {kind!r}: one of {', '.join(ftypes)}")
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}.tmp{os.getpid()}")
    params = ll.llama_model_quantize_default_params()
    params.ftype = ftypes[kind]
    try:
        rc = ll.llama_model_quantize(os.fsencode(src), os.fsencode(tmp), ctypes.byref(params))
        if rc != 0:
            raise LlamaCppError(f"llama_model_quantize({src} -> {kind}) returned {rc}; is {src} a valid GGUF?")
        os.replace(tmp, dst)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return dst


def gguf_for(model: str | os.PathLike, kind: str = "f32", *, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cached GGUF of `model` in `kind` ("f32" | "q8_0"), written (and quantized) on a miss."""
    from sycojax.models.loading import content_hash, default_cache_dir, resolve_source

    if kind not in KINDS:
        raise ValueError(f"GGUF kind {kind!r}: one of {', '.join(KINDS)}")
    if kind != "f32":
        _llama()  # before any conversion: the quantizer is llama.cpp's
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    src = resolve_source(model)
    key = hashlib.sha256(json.dumps([WRITER_VERSION, content_hash(src, root)]).encode()).hexdigest()[:16]
    path = root / "gguf" / f"{src.slug}-{key}-{kind}.gguf"
    if path.is_file():
        return path
    if kind == "f32":
        return write_gguf(model, path, cache_dir=root)
    return quantize(gguf_for(model, "f32", cache_dir=root), path, kind)


# ============================================================================= greedy decoding
class LlamaCppDecoder:
    """A llama.cpp model + context kept loaded; each call decodes one prompt greedily from an empty cache."""

    def __init__(self, path: str | os.PathLike, threads: int, n_ctx: int = 2048, kv_type: str = "f32"):
        ll = self._ll = _llama()
        kv = {"f32": 0, "f16": 1}  # GGML_TYPE_F32 / GGML_TYPE_F16
        if kv_type not in kv:
            raise ValueError(f"kv_type {kv_type!r}: one of {', '.join(kv)}")
        self.path, self.threads, self.n_ctx = Path(path), int(threads), int(n_ctx)
        self._model = self._ctx = self._batch = None
        self._model = ll.llama_model_load_from_file(os.fsencode(self.path), ll.llama_model_default_params())
        if not self._model:
            raise LlamaCppError(f"llama.cpp could not load {self.path} (not a GGUF it understands)")
        cp = ll.llama_context_default_params()
        cp.n_ctx = cp.n_batch = self.n_ctx  # a whole prompt in one llama_decode
        cp.n_ubatch = min(512, self.n_ctx)
        cp.n_threads = cp.n_threads_batch = self.threads
        cp.type_k = cp.type_v = kv[kv_type]
        cp.no_perf = True
        self._ctx = ll.llama_init_from_model(self._model, cp)
        if not self._ctx:
            self.close()
            raise LlamaCppError(f"llama.cpp could not create a context (n_ctx={n_ctx}) for {self.path}")
        self.n_vocab = int(ll.llama_vocab_n_tokens(ll.llama_model_get_vocab(self._model)))
        self._batch = ll.llama_batch_init(self.n_ctx, 0, 1)

    def __call__(self, prompt_ids: Sequence[int], new_tokens: int) -> dict[str, Any]:
        ll, ctx = self._ll, self._ctx
        n = len(prompt_ids)
        if n < 1 or new_tokens < 1 or n + new_tokens > self.n_ctx:
            raise ValueError(f"need 1 <= len(prompt) and 1 <= new_tokens and their sum ({n} + {new_tokens}) "
                             f"<= n_ctx={self.n_ctx}")
        if hasattr(ll, "llama_memory_clear"):
            ll.llama_memory_clear(ll.llama_get_memory(ctx), True)
        else:  # llama.cpp before the llama_memory API
            ll.llama_kv_self_clear(ctx)
        t0 = time.perf_counter()
        out = [self._step(prompt_ids, 0)]
        t1 = time.perf_counter()
        for i in range(new_tokens - 1):
            out.append(self._step(out[-1:], n + i))
        t2 = time.perf_counter()
        prefill_s, decode_s = t1 - t0, t2 - t1
        return {
            "tokens": out,
            "prefill_s": prefill_s,
            "decode_s": decode_s,
            "prefill_tok_s": n / prefill_s,
            "decode_tok_s": (new_tokens - 1) / decode_s if new_tokens > 1 else None,
        }

    def _step(self, ids: Sequence[int], pos0: int) -> int:
        """Decode `ids` at positions `pos0..`, return the argmax of the last one's logits."""
        b = self._batch
        for i, t in enumerate(ids):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = int(t), pos0 + i, 1, 0
            b.seq_id[i][0] = 0
        b.logits[len(ids) - 1] = 1
        b.n_tokens = len(ids)
        rc = self._ll.llama_decode(self._ctx, b)
        if rc != 0:
            raise LlamaCppError(f"llama_decode returned {rc} at position {pos0} ({len(ids)} tokens)")
        logits = np.ctypeslib.as_array(self._ll.llama_get_logits_ith(self._ctx, -1), shape=(self.n_vocab,))
        return int(logits.argmax())

    def close(self) -> None:
        ll = self._ll
        if self._batch is not None:
            ll.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            ll.llama_free(self._ctx)
        if self._model:
            ll.llama_model_free(self._model)
        self._ctx = self._model = None

    def __enter__(self) -> LlamaCppDecoder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def greedy_decode(path: str | os.PathLike, prompt_ids: Sequence[int], new_tokens: int, threads: int,
                  kv_type: str = "f32") -> dict[str, Any]:
    """One greedy decode with llama.cpp (load, decode, free); see `LlamaCppDecoder` to keep the model loaded."""
    with LlamaCppDecoder(path, threads, n_ctx=len(prompt_ids) + new_tokens, kv_type=kv_type) as dec:
        return dec(prompt_ids, new_tokens)
