"""Weight conversion: a name map plus small per-tensor transforms, in both directions.

Three namings meet here:

- **HF**: flat checkpoint keys, one tensor per layer: `model.layers.7.self_attn.q_proj.weight`.
- **tree**: sycojax's nested param dict, the same names with the layers STACKED on a leading
  axis: `params["model"]["layers"]["self_attn"]["q_proj"]["weight"][7]` (see `config.py`).
- **GGUF** (llama.cpp): `blk.7.attn_q.weight`, with q/k rows permuted for interleaved RoPE.

HF key <-> tree path is mechanical: the integer after a `layers` segment is the layer index and
disappears from the path (`hf_key_to_path` / `path_to_hf_key`). The expected tree (names and
stacked shapes) comes from `sycojax.models.init.param_shapes(cfg)`: one source of truth for the
loader, the exporter and `init_params`.

GGUF <-> HF is a name table plus the q/k row permutation. llama.cpp's converter reorders each
head's rows from HF's rotate-half layout `[x_0 .. x_{h/2-1}, y_0 .. y_{h/2-1}]` to the interleaved
`[x_0, y_0, x_1, y_1, ...]`::

    gguf = hf.reshape(n, 2, hd//2, D).swapaxes(1, 2).reshape(hf.shape)      # permute_qk
    hf   = gguf.reshape(n, hd//2, 2, D).swapaxes(1, 2).reshape(gguf.shape)  # unpermute_qk

with `n = num_heads` for q and `num_kv_heads` for k. Both are exact (pure reindexing).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from sycojax.models.config import ModelConfig
from sycojax.models.init import param_shapes

Shape = tuple[int, ...]
# A lazily-read checkpoint: key -> (shape, read() -> array). Shapes are checked before any read.
TensorSource = Mapping[str, tuple[Shape, Callable[[], np.ndarray]]]


class LoadError(ValueError):
    """A checkpoint sycojax cannot load; the message says what is wrong and how to fix it."""


# Non-parameter buffers that HF checkpoints sometimes carry; never part of the param tree.
_BUFFER = re.compile(
    r"(^|\.)(rotary_emb\.inv_freq|attention\.bias|attention\.masked_bias|attn\.bias|attn\.masked_bias)$"
)


def is_buffer(key: str) -> bool:
    """True for the causal-mask / RoPE buffers old HF checkpoints store next to the weights."""
    return bool(_BUFFER.search(key))


# ----------------------------------------------------------------------------- HF key <-> tree path
def hf_key_to_path(key: str) -> tuple[tuple[str, ...], int | None]:
    """`model.layers.7.self_attn.q_proj.weight` -> `(("model", "layers", "self_attn", "q_proj", "weight"), 7)`."""
    parts = key.split(".")
    for j in range(len(parts) - 1):
        if parts[j] == "layers" and parts[j + 1].isdigit():
            return tuple(parts[: j + 1] + parts[j + 2 :]), int(parts[j + 1])
    return tuple(parts), None


def path_to_hf_key(path: Iterable[str], layer: int | None = None) -> str:
    """Inverse of `hf_key_to_path`."""
    path = list(path)
    if layer is not None:
        j = path.index("layers")
        path = path[: j + 1] + [str(layer)] + path[j + 1 :]
    return ".".join(path)


def flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Nested dict -> `{path: leaf}` (leaves: arrays or shape tuples)."""
    out: dict[tuple[str, ...], Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = v
    return tree


def _is_stacked(path: tuple[str, ...]) -> bool:
    return "layers" in path


def head_path(cfg: ModelConfig) -> tuple[str, ...]:
    """Tree path of the output projection (`lm_head` / `embed_out`)."""
    return ("lm_head", "weight") if cfg.arch == "llama" else ("embed_out", "weight")


def expected_hf_shapes(cfg: ModelConfig) -> dict[str, Shape]:
    """Every HF checkpoint key `cfg` needs, with its (unstacked) shape."""
    out: dict[str, Shape] = {}
    for path, shape in flatten(param_shapes(cfg)).items():
        if _is_stacked(path):
            for i in range(shape[0]):
                out[path_to_hf_key(path, i)] = tuple(shape[1:])
        else:
            out[path_to_hf_key(path)] = tuple(shape)
    return out


# ----------------------------------------------------------------------------- HF -> tree
def hf_to_tree(source: TensorSource, cfg: ModelConfig, *, where: str = "checkpoint") -> dict:
    """Stack a flat HF checkpoint into the param tree of `cfg` (fp32 numpy).

    Buffers (`rotary_emb.inv_freq`, `attention.bias`, ...) are skipped. With tied embeddings a
    redundant `lm_head.weight` is dropped (HF ignores it too); a tied head the tree still needs
    (`embed_out` for GPT-NeoX) is filled from the input embedding. Every other mismatch between the
    checkpoint and its config raises `LoadError` before any tensor is read: missing tensors,
    unexpected tensors, wrong shapes (naming the tensor, expected vs got).
    """
    expected = expected_hf_shapes(cfg)
    embed_key = path_to_hf_key(cfg.embed_path)
    head_key = path_to_hf_key(head_path(cfg))
    keys = {k for k in source if not is_buffer(k)}
    fill_head = False
    if cfg.tie_word_embeddings:
        if head_key not in expected:
            keys.discard(head_key)  # redundant copy of the tied embedding
        elif head_key not in keys and embed_key in keys:
            fill_head = True

    missing = sorted(set(expected) - keys - ({head_key} if fill_head else set()))
    unexpected = sorted(keys - set(expected))
    if missing:
        raise LoadError(
            f"{where} lacks {len(missing)} tensor(s) that its config needs: {_preview(missing)}. "
            "The checkpoint is incomplete or does not match its config (num_hidden_layers, "
            "tie_word_embeddings, attention_bias...): re-export it, or fix the config."
        )
    if unexpected:
        raise LoadError(
            f"{where} has {len(unexpected)} tensor(s) that the config does not describe: {_preview(unexpected)}. "
            "The config does not match the weights (wrong model_type, num_hidden_layers, attention_bias, "
            "mlp_bias?): use the config.json saved with these weights."
        )
    for k in sorted(keys):
        got = tuple(source[k][0])
        if got != expected[k]:
            raise LoadError(
                f"{where}: tensor {k!r} has shape {got} but the config implies {expected[k]}. "
                "The weights and the config describe different models: use the config.json saved with them."
            )

    flat: dict[tuple[str, ...], np.ndarray] = {}
    for path, shape in flatten(param_shapes(cfg)).items():
        if _is_stacked(path):
            arr = np.empty(shape, np.float32)
            for i in range(shape[0]):
                arr[i] = source[path_to_hf_key(path, i)][1]()
        elif fill_head and path == head_path(cfg):
            continue
        else:
            arr = np.asarray(source[path_to_hf_key(path)][1](), dtype=np.float32)
        flat[path] = arr
    if fill_head:
        flat[head_path(cfg)] = flat[tuple(cfg.embed_path)].copy()
    return unflatten(flat)


def _preview(names: list[str], n: int = 8) -> str:
    s = ", ".join(names[:n])
    return s + (f", ... ({len(names) - n} more)" if len(names) > n else "")


# ----------------------------------------------------------------------------- tree -> HF
def tree_to_hf(params: Mapping[str, Any], cfg: ModelConfig, dtype=np.float32) -> dict[str, np.ndarray]:
    """Unstack the param tree into flat HF checkpoint tensors (contiguous numpy).

    With tied embeddings the head is omitted for LLaMA (HF re-ties it on load). Leaves the config
    does not describe (adapter trees merged in by mistake, a tied `lm_head`) raise `ValueError`.
    """
    shapes = flatten(param_shapes(cfg))
    flat = flatten(params)
    extra = sorted(".".join(p) for p in set(flat) - set(shapes))
    missing = sorted(".".join(p) for p in set(shapes) - set(flat))
    if extra or missing:
        raise ValueError(
            f"params do not match the {cfg.arch} config: missing {missing or 'none'}, unexpected {extra or 'none'}. "
            "Export only the base tree (merge LoRA first with the adapters' merge function)."
        )
    out: dict[str, np.ndarray] = {}
    for path, shape in shapes.items():
        arr = np.asarray(flat[path])
        if arr.shape != tuple(shape):
            raise ValueError(f"param {'.'.join(path)} has shape {arr.shape}, the config implies {tuple(shape)}")
        arr = arr.astype(dtype, copy=False)
        if _is_stacked(path):
            for i in range(shape[0]):
                out[path_to_hf_key(path, i)] = np.ascontiguousarray(arr[i])
        else:
            out[path_to_hf_key(path)] = np.ascontiguousarray(arr)
    return out


# ----------------------------------------------------------------------------- GGUF <-> HF (llama)
GGUF_GLOBAL = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
GGUF_BLOCK = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_HF_BLOCK = {v: k for k, v in GGUF_BLOCK.items()}
_HF_GLOBAL = {v: k for k, v in GGUF_GLOBAL.items()}
_BLK = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def gguf_to_hf_name(name: str) -> str | None:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`; None if not a LLaMA tensor."""
    m = _BLK.match(name)
    if m:
        i, mod, kind = m.groups()
        return f"model.layers.{i}.{GGUF_BLOCK[mod]}.{kind}" if mod in GGUF_BLOCK else None
    base, _, kind = name.rpartition(".")
    return f"{GGUF_GLOBAL[base]}.{kind}" if base in GGUF_GLOBAL else None


def hf_to_gguf_name(key: str) -> str:
    """Inverse of `gguf_to_hf_name` (LLaMA keys)."""
    m = _LAYER.match(key)
    if m:
        i, mod, kind = m.groups()
        return f"blk.{i}.{_HF_BLOCK[mod]}.{kind}"
    base, _, kind = key.rpartition(".")
    return f"{_HF_GLOBAL[base]}.{kind}"


def qk_heads(hf_key: str, cfg: ModelConfig) -> int | None:
    """Number of heads whose rows GGUF permutes in this tensor (q: num_heads, k: num_kv_heads)."""
    if ".self_attn.q_proj." in hf_key:
        return cfg.num_heads
    if ".self_attn.k_proj." in hf_key:
        return cfg.num_kv_heads
    return None


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """GGUF interleaved-RoPE rows -> HF rotate-half rows (per head); works on weights and biases."""
    hd = w.shape[0] // n_head
    return w.reshape(n_head, hd // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half rows -> GGUF interleaved rows (what llama.cpp's converter writes)."""
    hd = w.shape[0] // n_head
    return w.reshape(n_head, 2, hd // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
