"""The forward pass of every supported architecture, as one pure function.

`forward(params, tokens, cfg=..., positions=..., mask=...)` runs a LLaMA-family or GPT-NeoX model
whose layers are stacked on a leading axis, with one `lax.scan` over layers. Everything a method
changes comes in from outside:

- `mask (B, 1, T, S)` and `positions (B, T)`: built by `sycojax.masks` (gist, CCM, padding...);
- `adapters`: separate trees combined only here — LoRA on any linear module (optionally gated per
  position) and extra embedding rows for token ids `>= vocab_size` (memory tokens, `<GIST>`, COMP);
- `modules`: per-block modules (`modules.BlockModules`), each its own tree — a hook on chosen blocks'
  outputs (`h ← h + f(h, ctx)`) and replacements of chosen blocks' feed-forward, with `module_ctx` (a
  document key, a memory store) handed to every module. Without them, the one layer scan as always;
- `cache`: a preallocated KV cache written at `cache_index` (keys stored after RoPE).

`hidden_at` runs up to a block and `forward(start_layer=...)` on from there: below a module on a frozen
base the activations never change, so they can be computed once.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from sycojax.models import layers as L
from sycojax.models.config import ModelConfig
from sycojax.models.modules import BlockModules, module_output


@struct.dataclass
class Adapters:
    """Trainable trees the forward applies on top of the frozen base.

    lora:        `{"model"|"gpt_neox": {"layers": {<block>: {<linear>: {"lora_A": (L, r, in),
                 "lora_B": (L, out, r)}}}}}` — the same path as the base weight it patches.
    lora_scale:  `alpha / r` (static).
    gate:        `(B, T)` in {0, 1}: where LoRA applies (conditional LoRA); None = everywhere.
    embeddings:  `(N, D)` rows for token ids `V .. V+N-1` (memory / gist / COMP tokens).
    lora_per_row: (static) each batch row carries its own LoRA: every leaf of `lora` has a leading batch
                 axis, `lora_A (B, L, r, in)`, `lora_B (B, L, out, r)`, and row `b` of the batch is patched
                 by `[b]` (a generated LoRA per context; `sycojax.adapters.stack_lora_rows` builds one).
    """

    lora: Any = None
    gate: Array | None = None
    embeddings: Array | None = None
    lora_scale: float = struct.field(pytree_node=False, default=1.0)
    lora_per_row: bool = struct.field(pytree_node=False, default=False)


@struct.dataclass
class Output:
    logits: Array | None  # (B, T, V) fp32
    hidden_states: Array | None  # (L+1, B, T, D): embeddings, each block's output;
                                 # the last one after the final norm (as HF)
    final_hidden: Array  # (B, T, D) after the final norm: what the LM head reads
    cache: dict | None  # {"k", "v"}: (L, B, S, n_kv, hd)
    ffn_inputs: dict | None = None  # {block: (B, T, D)}: what each FF-replacement module read (`return_ffn_inputs`)


class SequenceTooLong(ValueError):
    pass


def check_length(cfg: ModelConfig, n: int, what: str = "sequence") -> None:
    """Raise a clear error when `n` tokens do not fit the model's context window."""
    if n > cfg.max_position_embeddings:
        raise SequenceTooLong(
            f"{what} needs {n} positions but the model's context window is {cfg.max_position_embeddings} "
            "tokens; shorten the input (or the requested new tokens), or use a model with a longer context."
        )


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=jnp.float32) -> dict:
    shape = (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)
    return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)}


def embed(params: dict, tokens: Int[Array, "b t"], cfg: ModelConfig, extra: Array | None = None) -> Array:
    """Token embeddings; ids `>= vocab_size` index the `extra` table (adapter rows). An int8 table (a tied head
    quantized by `quant.quantize_int8`) is dequantised row by row."""
    module = _get(params, cfg.embed_path[:-1])
    v = cfg.vocab_size
    ids = jnp.clip(tokens, 0, v - 1)
    e = jnp.take(module["weight"], ids, axis=0)
    if "weight_scale" in module:
        e = L.dequantize(e, jnp.take(module["weight_scale"], ids, axis=0))
    if extra is not None:
        ex = jnp.take(extra, jnp.clip(tokens - v, 0, extra.shape[0] - 1), axis=0).astype(e.dtype)
        e = jnp.where((tokens >= v)[..., None], ex, e)
    return e


def _head_module(params: dict, cfg: ModelConfig) -> dict:
    if cfg.arch == "gpt_neox":
        return params["embed_out"]
    if cfg.tie_word_embeddings:
        return params["model"]["embed_tokens"]
    return params["lm_head"]


def lm_head_weight(params: dict, cfg: ModelConfig) -> Array:
    """The head's `(V, D)` weight; an int8 head (`quant.quantize_int8`) comes back dequantised to fp32 (a full
    copy: the model's own head, `lm_head`, dequantises inside the product instead)."""
    p = _head_module(params, cfg)
    if "weight_scale" in p:
        return L.dequantize(p["weight"], p["weight_scale"])
    return p["weight"]


def lm_head(params: dict, x: Float[Array, "... d"], cfg: ModelConfig, dtype=None,
            weight_major: bool = False) -> Float[Array, "... v"]:
    """fp32 logits `x Wᵀ` of the LM head in `dtype` (None: the params' dtype); `weight_major` as `layers.dot_wt`.
    An int8 head is dequantised inside the product (`layers.dot_wt_int8`)."""
    p = _head_module(params, cfg)
    dtype = dtype or param_dtype(params, cfg)
    if "weight_scale" in p:
        return L.dot_wt_int8(x.astype(dtype), p["weight"], p["weight_scale"]).astype(jnp.float32)
    return L.dot_wt(x.astype(dtype), p["weight"].astype(dtype), weight_major).astype(jnp.float32)


def param_dtype(params: dict, cfg: ModelConfig):
    """The dtype the model computes in by default: the embedding's (its scales' if it is int8)."""
    module = _get(params, cfg.embed_path[:-1])
    return module["weight_scale"].dtype if "weight_scale" in module else module["weight"].dtype


def _get(tree, path):
    for p in path:
        tree = tree[p]
    return tree


# --------------------------------------------------------------------------- blocks


def _llama_block(h, lp, lora, ctx, ffn=None):
    cfg: ModelConfig = ctx["cfg"]
    lin = functools.partial(L.linear, lora_scale=ctx["lora_scale"], gate=ctx["gate"], dtype=ctx["dtype"],
                            weight_major=ctx["weight_major"], lora_per_row=ctx["lora_per_row"])
    lo = lora or {}
    b, t, _ = h.shape
    x = L.rms_norm(h, lp["input_layernorm"]["weight"], cfg.norm_eps)
    att, alo = lp["self_attn"], lo.get("self_attn", {})
    q = lin(x, att["q_proj"], alo.get("q_proj")).reshape(b, t, cfg.num_heads, cfg.head_dim)
    k = lin(x, att["k_proj"], alo.get("k_proj")).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v = lin(x, att["v_proj"], alo.get("v_proj")).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    o, kv = _attend(q, k, v, ctx)
    h = h + lin(o.reshape(b, t, -1), att["o_proj"], alo.get("o_proj")).astype(h.dtype)
    x = L.rms_norm(h, lp["post_attention_layernorm"]["weight"], cfg.norm_eps)
    y = _llama_mlp(x, lp["mlp"], lo.get("mlp", {}), lin) if ffn is None else ffn(x.astype(ctx["dtype"]))
    h = h + y.astype(h.dtype)
    return h, kv


def _llama_mlp(x, mlp, mlo, lin):
    act = jax.nn.silu(lin(x, mlp["gate_proj"], mlo.get("gate_proj"))) * lin(x, mlp["up_proj"], mlo.get("up_proj"))
    return lin(act, mlp["down_proj"], mlo.get("down_proj"))


def _gpt_neox_block(h, lp, lora, ctx, ffn=None):
    cfg: ModelConfig = ctx["cfg"]
    lin = functools.partial(L.linear, lora_scale=ctx["lora_scale"], gate=ctx["gate"], dtype=ctx["dtype"],
                            weight_major=ctx["weight_major"], lora_per_row=ctx["lora_per_row"])
    lo = lora or {}
    b, t, _ = h.shape
    att, alo = lp["attention"], lo.get("attention", {})
    x = L.layer_norm(h, lp["input_layernorm"], cfg.norm_eps)
    qkv = lin(x, att["query_key_value"], alo.get("query_key_value")).reshape(b, t, cfg.num_heads, 3, cfg.head_dim)
    q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
    o, kv = _attend(q, k, v, ctx)
    attn_out = lin(o.reshape(b, t, -1), att["dense"], alo.get("dense")).astype(h.dtype)
    mlp, mlo = lp["mlp"], lo.get("mlp", {})

    def ff(x):
        y = _gpt_neox_mlp(x, mlp, mlo, lin) if ffn is None else ffn(x.astype(ctx["dtype"]))
        return y.astype(h.dtype)

    if cfg.use_parallel_residual:
        h = h + attn_out + ff(L.layer_norm(h, lp["post_attention_layernorm"], cfg.norm_eps))
    else:
        h = h + attn_out
        h = h + ff(L.layer_norm(h, lp["post_attention_layernorm"], cfg.norm_eps))
    return h, kv


def _gpt_neox_mlp(x, mlp, mlo, lin):
    y = jax.nn.gelu(lin(x, mlp["dense_h_to_4h"], mlo.get("dense_h_to_4h")), approximate=False)
    return lin(y, mlp["dense_4h_to_h"], mlo.get("dense_4h_to_h"))


def _attend(q, k, v, ctx):
    cos, sin = ctx["rope"]
    q = L.apply_rope(q, cos, sin)
    k = L.apply_rope(k, cos, sin)
    if ctx["kv_mix"] is not None:  # rows of K/V replaced by weighted sums of other rows (after RoPE)
        weights, rows = ctx["kv_mix"]
        k, v = (jnp.where(rows[:, :, None, None], jnp.einsum("bqk,bkmh->bqmh", weights.astype(x.dtype), x), x)
                for x in (k, v))
    lc = ctx["layer_cache"]
    if lc is None:
        return L.attention(q, k, v, ctx["mask"], impl=ctx["attn_impl"]), None
    if ctx["own_cache_buffer"]:
        # This layer's cache is its own buffer (unstacked decoding): write the new K/V first, in place, then
        # attend over the whole cache (the mask covers the new slots). Attending to the old cache and writing
        # afterwards would keep both versions alive: XLA then copies the cache at every step.
        # Its layout is head-major with batch and KV heads merged (`unstack_cache`): K as (B·n_kv, hd, S), V as
        # (B·n_kv, S, hd), read as they are by `attention_merged_cache` (no reshape of the updated buffer).
        idx = ctx["cache_index"]
        b, t, m, hd = k.shape
        k_t, v_m = L.kv_head_major(k, v)
        kc = jax.lax.dynamic_update_slice(lc["k"], k_t.reshape(b * m, hd, t).astype(lc["k"].dtype), (0, 0, idx))
        vc = jax.lax.dynamic_update_slice(lc["v"], v_m.reshape(b * m, t, hd).astype(lc["v"].dtype), (0, idx, 0))
        if ctx["attn_impl"] == "xla":
            out = L.attention_merged_cache(q, kc.astype(q.dtype), vc.astype(q.dtype), ctx["mask"])
        else:
            kk, vv = L.kv_seq_major(kc.reshape(b, m, hd, -1), vc.reshape(b, m, -1, hd))
            out = L.attention(q, kk.astype(q.dtype), vv.astype(q.dtype), ctx["mask"], impl=ctx["attn_impl"])
        return out, {"k": kc, "v": vc}
    # With a cache: attend over [cached keys] + [this call's keys] in one softmax, and hand the new K/V
    # back; the caller writes them into the cache once, after the layer scan (in place, no per-layer copy).
    # Cache slots about to be overwritten (idx .. idx+T) hold stale values: masked out of the cached part.
    idx, t, s = ctx["cache_index"], q.shape[1], lc["k"].shape[1]
    slot = jnp.arange(s)
    mask = ctx["mask"]
    mask_old = mask & ~((slot >= idx) & (slot < idx + t))[None, None, None, :]
    mask_new = jax.lax.dynamic_slice_in_dim(mask, idx, t, axis=3)
    out = L.attention_with_cache(q, lc["k"].astype(q.dtype), lc["v"].astype(q.dtype), mask_old, k, v, mask_new,
                                 impl=ctx["attn_impl"])
    return out, {"k": k, "v": v}


_BLOCKS = {"llama": (_llama_block, "model"), "gpt_neox": (_gpt_neox_block, "gpt_neox")}
_MLPS = {"llama": _llama_mlp, "gpt_neox": _gpt_neox_mlp}


def base_ffn(mlp: dict, x: Float[Array, "b t d"], cfg: ModelConfig) -> Float[Array, "b t d"]:
    """The base feed-forward of one block (its `mlp` tree, `block_mlp`) on its normed input `x`, in `x`'s dtype."""
    return _MLPS[cfg.arch](x, mlp, {}, functools.partial(L.linear, dtype=x.dtype))


def block_mlp(params: dict, cfg: ModelConfig, i: int) -> dict:
    """Block `i`'s feed-forward weights (`mlp` subtree), from stacked or unstacked (`unstack_layers`) params."""
    layers = params[_BLOCKS[cfg.arch][1]]["layers"]
    if isinstance(layers, (list, tuple)):
        return layers[i]["mlp"]
    return jax.tree.map(lambda x: x[i], layers["mlp"])


@dataclasses.dataclass(frozen=True)
class BaseFFN:
    """The base model's feed-forward as an FF-replacement module: `Module(BaseFFN(cfg), block_mlp(params, cfg, i))`.

    A replacement equal to it gives the base model's output: the reference a distilled FF is checked
    against, and its natural starting point. Hashable by value (static under `jit`).
    """

    cfg: ModelConfig

    def __call__(self, mlp: dict, x: Array, ctx: Any) -> Array:
        return base_ffn(mlp, x, self.cfg)


# --------------------------------------------------------------------------- forward


def unstack_layers(params: dict, cfg: ModelConfig) -> dict:
    """The same params with `layers` as a list of per-layer trees (each weight its own buffer).

    `forward` then loops over the layers in Python instead of `lax.scan` and takes the cache as a
    per-layer list (`unstack_cache`). Inside `lax.scan` every layer's weights are `dynamic_slice`d,
    and XLA:CPU copies the slice before the matmul: decoding, which reads every weight once per
    token, then moves each weight ~3x. Costs one copy of the layer weights: for decoding loops.
    """
    root = _BLOCKS[cfg.arch][1]
    stacked = params[root]["layers"]
    layers = [jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(cfg.num_layers)]
    return {**params, root: {**params[root], "layers": layers}}


def unstack_cache(cache: dict) -> list[dict]:
    """`{"k","v"}: (L, B, S, n_kv, hd)` -> per-layer head-major buffers `[{"k": (B·n_kv, hd, S),
    "v": (B·n_kv, S, hd)}]`: the layouts attention reads directly (`layers.attention_merged_cache`), so a
    decoding step neither copies nor transposes the cache. `restack_cache` is the inverse."""
    out = []
    for k, v in zip(cache["k"], cache["v"]):
        k_t, v_m = L.kv_head_major(k, v)  # (B, n_kv, hd, S), (B, n_kv, S, hd)
        out.append({"k": k_t.reshape(-1, *k_t.shape[2:]), "v": v_m.reshape(-1, *v_m.shape[2:])})
    return out


def restack_cache(layers: list[dict], num_kv_heads: int) -> dict:
    """Inverse of `unstack_cache`."""
    per_layer = []
    for c in layers:
        k_t, v_m = c["k"], c["v"]
        per_layer.append(L.kv_seq_major(k_t.reshape(-1, num_kv_heads, *k_t.shape[1:]),
                                        v_m.reshape(-1, num_kv_heads, *v_m.shape[1:])))
    return {"k": jnp.stack([k for k, _ in per_layer]), "v": jnp.stack([v for _, v in per_layer])}


# `forward(remat=...)`: what each block keeps for the backward pass (the rest is recomputed).
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy(remat: bool | str):
    """The `jax.checkpoint` policy for `forward(remat=...)` (True means "full")."""
    name = "full" if remat is True else remat
    if name not in REMAT_POLICIES:
        raise ValueError(f"unknown remat {remat!r}; use False, True or one of {sorted(REMAT_POLICIES)}")
    return REMAT_POLICIES[name]


def forward(
    params: dict,
    tokens: Int[Array, "b t"] | None,
    *,
    cfg: ModelConfig,
    positions: Int[Array, "b t"],
    mask: Bool[Array, "b 1 t s"],
    adapters: Adapters | None = None,
    modules: BlockModules | None = None,
    module_ctx: Any = None,
    cache: dict | None = None,
    cache_index: Int[Array, ""] | int = 0,
    embeddings: Float[Array, "b t d"] | None = None,
    start_layer: int = 0,
    return_hidden: bool = False,
    return_logits: bool = True,
    return_ffn_inputs: bool = False,
    kv_mix: tuple | None = None,
    compute_dtype=None,
    attn_impl: str = "xla",
    remat: bool | str = False,
) -> Output:
    """Run the model.

    Args:
      params: base tree (HF names, layers stacked). Never modified.
      tokens: `(B, T)` ids; ids `>= vocab_size` read `adapters.embeddings`. Ignored if `embeddings` given.
      positions: `(B, T)` RoPE positions (explicit: gist and CCM choose their own).
      mask: `(B, 1, T, S)` bool, `S = T` without a cache, `S = cache length` with one.
      modules: per-block modules (`modules.BlockModules`: hooks on chosen blocks' outputs, replacements of
        chosen blocks' feed-forward), each its own tree. None (or empty): the plain model's one layer scan.
        With modules, the plain blocks between module blocks are scanned over slices of the stacked params
        and each module block runs unrolled; the cache (stacked or unstacked) works the same way.
      module_ctx: any pytree handed unchanged to every module (a document key, a memory store's arrays).
      cache: `{"k","v"}` of shape `(L, B, S, n_kv, hd)`; new keys/values are written at `cache_index`.
      embeddings: `(B, T, D)` to start from instead of embedding `tokens`; with `start_layer > 0`, the
        residual stream entering block `start_layer` (`hidden_at`).
      start_layer: run only blocks `start_layer .. L-1` (and their modules), from `embeddings`: the frozen
        blocks below a module computed once and cached. No KV cache with it.
      return_hidden: also return every block's output (HF's `output_hidden_states`: the last entry is normed;
        a hooked block's entry includes its hook). With `start_layer = s`: `L - s + 1` entries, from block s's input.
      return_logits: False skips the LM head (losses that chunk over the vocabulary read `final_hidden`).
      kv_mix: `(weights (B, T, T), rows (B, T) bool)`: in every layer, after RoPE, the keys and values of the
        positions in `rows` become `weights @ K` / `weights @ V` (CCM-merge's running mean of COMP K/V at its SUM
        tokens, computed in the same parallel pass). No KV cache with it.
      return_ffn_inputs: also return the normed input each FF-replacement module read, `{block: (B, T, D)}`
        (what a memory written from the model's activations stores); not with `remat`.
      compute_dtype: matmul dtype (None: the params' dtype); norms/softmax/RoPE stay fp32.
      remat: rematerialise each block in the backward pass (`jax.checkpoint`), trading compute for memory:
        False stores every residual; True / "full" recomputes the whole block; "dots" keeps the matmul
        outputs (projections, MLP) and recomputes attention scores, softmax and elementwise ops (`REMAT_POLICIES`).
    """
    if not 0 <= start_layer < cfg.num_layers:
        raise ValueError(f"start_layer={start_layer}: the model has blocks 0..{cfg.num_layers - 1}")
    if kv_mix is not None and cache is not None:
        raise ValueError("kv_mix mixes the K/V of this call's positions; it cannot be combined with a KV cache")
    if return_ffn_inputs and remat:
        raise ValueError("return_ffn_inputs with remat: the inputs live inside the rematerialised blocks; pass remat=False")
    if start_layer and (embeddings is None or cache is not None):
        raise ValueError("start_layer > 0 needs `embeddings` (the stream entering that block, `hidden_at`) "
                         "and no cache")
    adapters = adapters if adapters is not None else Adapters()
    dtype = compute_dtype or param_dtype(params, cfg)
    h = embeddings if embeddings is not None else embed(params, tokens, cfg, adapters.embeddings)
    h = h.astype(dtype)
    # inference on a few rows (decoding: one token per row) streams each weight faster laid out (out, rows)
    weight_major = cache is not None and h.shape[0] * h.shape[1] <= L.WEIGHT_MAJOR_MAX_ROWS
    h_in = h
    ffn_inputs = {} if return_ffn_inputs else None
    h, new_cache, hs = _blocks(
        params, h, cfg=cfg, positions=positions, mask=mask, adapters=adapters, modules=modules,
        module_ctx=module_ctx, cache=cache, cache_index=cache_index, start=start_layer, stop=cfg.num_layers,
        return_hidden=return_hidden, dtype=dtype, attn_impl=attn_impl, remat=remat, weight_major=weight_major,
        ffn_inputs=ffn_inputs, kv_mix=kv_mix,
    )
    final = final_norm(params, h, cfg)
    logits = None
    if return_logits:
        logits = lm_head(params, final, cfg, dtype, weight_major)
    # HF convention: embeddings, each block's output, and the LAST entry after the final norm.
    hidden = jnp.concatenate([h_in[None], hs[:-1], final[None]], axis=0) if return_hidden else None
    return Output(logits=logits, hidden_states=hidden, final_hidden=final, cache=new_cache, ffn_inputs=ffn_inputs)


def final_norm(params: dict, h: Float[Array, "... d"], cfg: ModelConfig) -> Float[Array, "... d"]:
    """The norm after the last block (RMSNorm for LLaMA, LayerNorm for GPT-NeoX)."""
    if cfg.arch == "llama":
        return L.rms_norm(h, params["model"]["norm"]["weight"], cfg.norm_eps)
    return L.layer_norm(h, params["gpt_neox"]["final_layer_norm"], cfg.norm_eps)


def lm_logits(params: dict, h: Float[Array, "... d"], cfg: ModelConfig) -> Float[Array, "... v"]:
    """fp32 logits from the last block's output stream `h` (final norm + LM head), at any positions: what
    `forward` ends with, for losses that run the head only where they need it."""
    return lm_head(params, final_norm(params, h, cfg), cfg)


def hidden_at(
    params: dict,
    tokens: Int[Array, "b t"] | None,
    *,
    cfg: ModelConfig,
    positions: Int[Array, "b t"],
    mask: Bool[Array, "b 1 t t"],
    layer: int,
    adapters: Adapters | None = None,
    modules: BlockModules | None = None,
    module_ctx: Any = None,
    embeddings: Float[Array, "b t d"] | None = None,
    compute_dtype=None,
    attn_impl: str = "xla",
) -> Float[Array, "b t d"]:
    """The residual stream entering block `layer`: the embeddings for 0, else block `layer - 1`'s output
    (with the modules of blocks below `layer`) — `forward(..., return_hidden=True).hidden_states[layer]`
    without running the blocks above. Resume with `forward(params, None, embeddings=h, start_layer=layer)`
    (same positions and mask): with a frozen base, the blocks below a module's block are computed once.
    """
    if not 0 <= layer <= cfg.num_layers:
        raise ValueError(f"layer={layer}: the model has blocks 0..{cfg.num_layers - 1} (layer may be {cfg.num_layers})")
    adapters = adapters if adapters is not None else Adapters()
    dtype = compute_dtype or param_dtype(params, cfg)
    h = embeddings if embeddings is not None else embed(params, tokens, cfg, adapters.embeddings)
    h = h.astype(dtype)
    if layer == 0:
        return h
    h, _, _ = _blocks(
        params, h, cfg=cfg, positions=positions, mask=mask, adapters=adapters, modules=modules,
        module_ctx=module_ctx, cache=None, cache_index=0, start=0, stop=layer, return_hidden=False,
        dtype=dtype, attn_impl=attn_impl, remat=False, weight_major=False,
    )
    return h


def _per_row_layers_first(lora_layers: dict, rows: int) -> dict:
    """A per-row LoRA's leaves `(B, L, ...)` -> `(L, B, ...)`, so the layer scan (or loop) hands each block
    its `(B, r, in)` / `(B, out, r)` slices; the row count must be the batch's."""
    for x in jax.tree.leaves(lora_layers):
        if x.ndim != 4 or x.shape[0] != rows:
            raise ValueError(f"a per-row LoRA (Adapters(lora_per_row=True)) needs leaves (B={rows}, L, ...) for a batch "
                             f"of {rows} rows; got a leaf of shape {x.shape}")
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), lora_layers)


def _blocks(params, h, *, cfg, positions, mask, adapters, modules, module_ctx, cache, cache_index, start, stop,
            return_hidden, dtype, attn_impl, remat, weight_major, ffn_inputs=None, kv_mix=None):
    """Blocks `start .. stop-1` on the residual stream `h` -> `(h, new cache | None, block outputs | None)`.

    Without modules (and all blocks) this is ONE `lax.scan` over the stacked layers, as the plain model
    always ran. With modules: a scan per run of plain blocks (over a slice of the stacked params and
    cache) and each module block unrolled between them; their new K/V are joined along the layer axis
    and written into the cache once, as in the plain scan. `ffn_inputs` (a dict, or None) receives each
    FF-replacement module's input by block index (module blocks are unrolled, so the values stay in this trace).
    """
    block, root = _BLOCKS[cfg.arch]
    rope = L.rope_cos_sin(cfg, positions)
    lora_layers = None if adapters.lora is None else adapters.lora[root]["layers"]
    if lora_layers is not None and adapters.lora_per_row:
        lora_layers = _per_row_layers_first(lora_layers, h.shape[0])
    if modules is not None:
        modules.check(cfg.num_layers)
    special = [i for i in (modules.blocks if modules is not None else ()) if start <= i < stop]

    layers = params[root]["layers"]
    unstacked = isinstance(layers, (list, tuple))

    def run(h, xs, i=None):
        lp, lo, lc = xs
        ctx = dict(
            cfg=cfg, rope=rope, mask=mask, gate=adapters.gate, lora_scale=adapters.lora_scale,
            lora_per_row=adapters.lora_per_row, dtype=dtype,
            layer_cache=lc, cache_index=cache_index, attn_impl=attn_impl, own_cache_buffer=unstacked,
            weight_major=weight_major, kv_mix=kv_mix,
        )
        hook = ffn = None
        if i is not None:  # a module block
            hook, ffn = modules.hooks.get(i), modules.ffn.get(i)

        def ff(x):
            if ffn_inputs is not None:
                ffn_inputs[i] = x
            return module_output("ffn", i, ffn(x, module_ctx), x)

        h, kv = block(h, lp, lo, ctx, None if ffn is None else ff)
        if hook is not None:
            h = h + module_output("hook", i, hook(h, module_ctx), h)
        return h, (kv, h if return_hidden else None)

    def step(h, xs):
        return run(h, xs)

    def module_step(i):
        f = functools.partial(run, i=i)
        return jax.checkpoint(f, policy=remat_policy(remat)) if remat else f

    if remat:
        step = jax.checkpoint(step, policy=remat_policy(remat))
    if unstacked:  # unstacked (see `unstack_layers`): a Python loop over layers
        new_cache, hs = ([] if cache is not None else None), []
        for i in range(start, stop):
            lo = None if lora_layers is None else jax.tree.map(lambda x, i=i: x[i], lora_layers)
            f = module_step(i) if i in special else step
            h, (kv, hh) = f(h, (layers[i], lo, None if cache is None else cache[i]))
            hs.append(hh)
            if cache is not None:  # the layer wrote its own cache buffer in place (`_attend`)
                new_cache.append(kv)
        hs = jnp.stack(hs) if return_hidden else None
        return h, new_cache, hs

    xs = (layers, lora_layers, cache)
    if not special and (start, stop) == (0, cfg.num_layers):  # the plain model: one scan
        h, (new_kv, hs) = jax.lax.scan(step, h, xs)
    else:
        kvs, hss, a = [], [], start
        for i in special + [stop]:
            if a < i:  # plain blocks a .. i-1: one scan over their slice
                h, (kv, hh) = jax.lax.scan(step, h, jax.tree.map(lambda x, a=a, i=i: x[a:i], xs))
                kvs.append(kv)
                hss.append(hh)
            if i < stop:  # module block i, unrolled
                h, (kv, hh) = module_step(i)(h, jax.tree.map(lambda x, i=i: x[i], xs))
                kvs.append(jax.tree.map(lambda x: x[None], kv))
                hss.append(None if hh is None else hh[None])
            a = i + 1
        new_kv = None if cache is None else jax.tree.map(lambda *x: jnp.concatenate(x), *kvs)
        hs = jnp.concatenate(hss) if return_hidden else None
    new_cache = None
    if cache is not None:  # one in-place write of every layer's new K/V: (L, B, T, n_kv, hd) at cache_index
        new_cache = {
            name: jax.lax.dynamic_update_slice(cache[name], new_kv[name].astype(cache[name].dtype),
                                               (0, 0, cache_index, 0, 0))
            for name in ("k", "v")
        }
    return h, new_cache, hs
