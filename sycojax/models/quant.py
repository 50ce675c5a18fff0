"""Weight-only int8 for fast batch-1 decoding: `generate(quantize_int8(params, cfg), cfg, prompts)`.

Every per-layer linear weight and the LM head become symmetric int8 with fp32 scales, in the same tree
(HF names, stacked layers):

    {"weight": f32 (..., o, i)}  ->  {"weight": int8 (..., o, i), "weight_scale": f32 (..., o)}
    w ≈ weight_scale[..., None] · weight,   weight_scale = max_i |w| / 127       (one scale per output channel)

or, with `group_size=g`, one scale per `g` consecutive inputs, `"weight_scale": f32 (..., o, i / g)` (llama.cpp's
Q8_0 layout for the weights). `layers.linear` and the model's head (`model.lm_head`) see `weight_scale` and
dequantise inside the product (`layers.dot_wt_int8`); a tied embedding is quantized once, as the head, and
the embedding lookup dequantises the row it reads. Norms, biases and an untied input embedding stay fp32.
Nothing changes unless this is called: fp32 trees run as before.

Decoding one row is memory-bandwidth bound (SmolLM2-135M: ~540 MB of fp32 weights read per token; int8
reads ~135 MB). SmolLM2-135M-Instruct, 90-token chat prompt, 128 greedy tokens, 2-core AMD EPYC, same process:
per channel 10.5 ms a decode step vs 22.6 for fp32 (2.2x), logits max |Δ| 0.50 of their std; per group of
32, 14.7 ms (1.5x), 0.21 of the std (bf16 weights and compute: 0.20). `dot_wt_int8` lists the forms tried.
Batched decoding (8 rows) is slower with int8 (67 vs 29 ms a step): XLA converts each weight before a GEMM.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sycojax.models.config import ModelConfig
from sycojax.models.init import param_shapes
from sycojax.models.layers import dequantize

INT8_MAX = 127


class NotAParamTree(ValueError):
    """`quantize_int8` was handed something other than a floating-point param tree of its config."""


def quantize_weight(w: jax.Array, group_size: int | None = None) -> tuple[jax.Array, jax.Array]:
    """Symmetric int8 of `w (..., o, i)`: `(q int8 (..., o, i), scale f32)`, `w ≈ layers.dequantize(q, scale)`.

    `group_size=None`: one scale per output channel, `(..., o)`; else one per `group_size` consecutive inputs
    of each output channel, `(..., o, i / group_size)`. A scale is its group's `max |w| / 127` (an all-zero
    group gets 1), so `|w - scale · q| <= scale / 2`.
    """
    w = jnp.asarray(w, jnp.float32)
    *lead, o, i = w.shape
    g = 1 if group_size is None else i // group_size
    wg = w.reshape(*lead, o, g, i // g)
    amax = jnp.max(jnp.abs(wg), axis=-1)
    scale = jnp.where(amax > 0, amax / INT8_MAX, 1.0)
    q = jnp.clip(jnp.round(wg / scale[..., None]), -INT8_MAX, INT8_MAX).astype(jnp.int8).reshape(w.shape)
    return q, (scale[..., 0] if group_size is None else scale)


def dequantize_weight(p: dict) -> jax.Array:
    """The fp32 weight a quantized module `{"weight": int8, "weight_scale": f32}` stands for."""
    return dequantize(p["weight"], p["weight_scale"], jnp.float32)


def head_path(cfg: ModelConfig) -> tuple[str, ...]:
    """Path of the module whose weight is the LM head (the input embedding's when tied)."""
    if cfg.arch == "gpt_neox":
        return ("embed_out",)
    return ("model", "embed_tokens") if cfg.tie_word_embeddings else ("lm_head",)


def quantized_paths(cfg: ModelConfig) -> list[tuple[str, ...]]:
    """Paths of the modules `quantize_int8` quantizes: every per-layer linear (a stacked `(L, o, i)` weight)
    and the head."""
    flat = jax.tree_util.tree_flatten_with_path(param_shapes(cfg), is_leaf=_is_shape)[0]
    paths = [tuple(k.key for k in path[:-1]) for path, shape in flat
             if path[-1].key == "weight" and len(shape) == 3 and "layers" in [k.key for k in path]]
    return paths + [head_path(cfg)]


def quantize_int8(params: dict, cfg: ModelConfig, group_size: int | None = None) -> dict:
    """A new tree with every linear weight and the LM head as int8 + fp32 scales (the module docstring): one
    scale per output channel, or with `group_size` one per that many consecutive inputs (`quantize_weight`).
    The other leaves are shared with `params`, which is not modified.

    Raises `NotAParamTree` for anything but the stacked floating-point param tree of `cfg` (an already
    quantized tree included), ValueError for a `group_size` that does not divide every input size.
    """
    _check_tree(params, cfg)
    paths = quantized_paths(cfg)
    if group_size is not None:
        sizes = sorted({_get(params, path)["weight"].shape[-1] for path in paths})
        if group_size < 1 or any(n % group_size for n in sizes):
            raise ValueError(f"group_size={group_size} must divide every quantized weight's input size {sizes} "
                             "(or None: one scale per output channel)")
    out = dict(params)
    for path in paths:
        node = out
        for k in path[:-1]:  # copy the dicts along the path, never the caller's
            node[k] = dict(node[k])
            node = node[k]
        q, scale = quantize_weight(node[path[-1]]["weight"], group_size)
        node[path[-1]] = {**node[path[-1]], "weight": q, "weight_scale": scale}
    return out


def _is_shape(x) -> bool:
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def _get(tree, path):
    for k in path:
        tree = tree[k]
    return tree


def _check_tree(params, cfg: ModelConfig) -> None:
    """Raise `NotAParamTree` unless `params` has exactly `cfg`'s leaves (`init.param_shapes`), all floating point."""
    if not isinstance(cfg, ModelConfig):
        raise NotAParamTree(f"quantize_int8(params, cfg): cfg must be a ModelConfig, got {type(cfg).__name__}")
    if not isinstance(params, dict):
        raise NotAParamTree(f"quantize_int8 needs a param tree (nested dicts of arrays), got {type(params).__name__}")
    want = {jax.tree_util.keystr(p): s
            for p, s in jax.tree_util.tree_flatten_with_path(param_shapes(cfg), is_leaf=_is_shape)[0]}
    got = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    if got.keys() != want.keys():
        missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
        quantized = any(k.endswith("['weight_scale']") for k in extra)
        unstacked = any(isinstance(v, dict) and isinstance(v.get("layers"), (list, tuple)) for v in params.values())
        hint = (" It is quantized already." if quantized else
                " Its layers are unstacked: quantize the stacked tree (generate() unstacks it)." if unstacked else "")
        raise NotAParamTree(f"not a param tree of this cfg ({cfg.arch}, {cfg.num_layers} layers):{hint} "
                            f"missing {missing[:3]}{' ...' * (len(missing) > 3)}, "
                            f"unexpected {extra[:3]}{' ...' * (len(extra) > 3)}")
    for k, shape in want.items():
        x = got[k]
        if tuple(np.shape(x)) != shape:
            raise NotAParamTree(f"params{k} has shape {tuple(np.shape(x))}; this cfg needs {shape}")
        dtype = getattr(x, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise NotAParamTree(f"params{k} has dtype {dtype}; quantize_int8 reads floating-point weights")
