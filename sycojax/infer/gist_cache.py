"""Gist caching: compress an instruction once into its k gist tokens' K/V, then decode many inputs against it.

Under the gist mask (`sycojax.masks.gist`) every token after the gist span attends to the gist tokens and
to what follows them, never to the instruction before the span. Once the gist tokens have been computed,
the instruction's keys and values are dead weight, so a gisted prompt `prefix · <GIST>×k · input` is served
in two steps (Mu, Li & Goodman 2023, "gist caching"):

    compress   run `[prefix, <GIST>×k]` (a left-padded batch, one instruction per row) under the gist mask
               — on this part it is exactly causal ∧ padding — with absolute positions `0 .. P_b + k - 1`
               (`positions_from_valid`), and keep the K/V of the LAST k slots of every layer:
               `k, v: (L, B, k, n_kv, hd)`, keys stored after RoPE at their absolute positions
               `P_b .. P_b + k - 1`, and `offset_b = P_b + k`.
    decode     cache slots `[k gist][left-padded input p][max_new_tokens new]`; input token j of row b (j
               counted from its first real token) sits at position `offset_b + j` — continuing from the
               original offset, NOT from k — and attends to the k gist slots and its own causal,
               non-padding past. Greedy decoding then runs inside `lax.while_loop` (one compiled program
               per shape, as `sycojax.infer.generate`).

This reproduces the masked full forward exactly (`tests/infer/test_gist_cache.py`, atol 1e-4): a query after
the gist span sees the same keys (gist + later tokens, after RoPE at the same absolute positions) with the
same values. KV memory per row drops from `P + k + S + new` to `k + S + new` token slots.

Batching (upstream `jayelm/gisting` serves batch size 1 only): rows may hold different instructions, so
different prefix lengths `P_b` and different offsets; and any number of inputs can share one compressed
instruction (`GistCache.take` / `GistCache.broadcast`), which is the point of caching.

`hide_gist=True` decodes the negative control (`neg_control`: tokens after the gist span see only tokens
strictly after it, but keep their absolute positions): the gist slots are masked out. The positive
control has no compressed form (the whole prompt stays visible): serve it with `sycojax.infer.generate`.
`<GIST>` is never generated: the logits cover only the real vocabulary.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Bool, Int

from sycojax.infer.generate import Generation, left_pad
from sycojax.masks import gist_mask, positions_from_valid
from sycojax.models import Adapters, ModelConfig, check_length, forward, init_cache, lm_head_weight


class GistCacheError(ValueError):
    """Bad input to gist compression or decoding; the message names the fix."""


@struct.dataclass
class GistCache:
    """The compressed instructions of a batch: K/V of the k gist positions of every layer.

    k, v:    `(L, B, G, n_kv, hd)`, G = number of gist tokens; keys after RoPE at absolute positions.
    offset:  `(B,)` int32, `P_b + G`: the absolute position of the first token after row b's gist span.
    """

    k: Array
    v: Array
    offset: Array

    @property
    def num_gist(self) -> int:
        return int(self.k.shape[2])

    @property
    def batch(self) -> int:
        return int(self.k.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes held by the K/V (all rows)."""
        return int(self.k.size * self.k.dtype.itemsize + self.v.size * self.v.dtype.itemsize)

    def take(self, rows: Sequence[int] | Array) -> GistCache:
        """The cache of `rows` (repeats allowed): serve many inputs from one compressed instruction."""
        rows = jnp.asarray(rows, jnp.int32)
        return GistCache(self.k[:, rows], self.v[:, rows], self.offset[rows])

    def broadcast(self, batch: int) -> GistCache:
        """A batch-1 cache repeated for `batch` rows."""
        if self.batch != 1:
            raise GistCacheError(f"broadcast needs a cache of one instruction, this one holds {self.batch}")
        return self.take(np.zeros(batch, np.int32))

    @staticmethod
    def empty(cfg: ModelConfig, batch: int, dtype=jnp.float32) -> GistCache:
        """No compressed instruction (G = 0, offset 0): `decode` then prefills whatever it is given, e.g. the
        whole prompt — the uncompressed baseline run by the very same program."""
        shape = (cfg.num_layers, batch, 0, cfg.num_kv_heads, cfg.head_dim)
        return GistCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((batch,), jnp.int32))

    @staticmethod
    def concatenate(caches: Sequence[GistCache]) -> GistCache:
        """Row-wise concatenation of caches with the same number of gist tokens."""
        if not caches:
            raise GistCacheError("no caches to concatenate")
        if len({c.num_gist for c in caches}) != 1:
            raise GistCacheError(f"caches hold different numbers of gist tokens: {[c.num_gist for c in caches]}")
        return GistCache(
            jnp.concatenate([c.k for c in caches], axis=1),
            jnp.concatenate([c.v for c in caches], axis=1),
            jnp.concatenate([c.offset for c in caches], axis=0),
        )


def kv_bytes_per_token(cfg: ModelConfig, dtype=jnp.float32) -> int:
    """Bytes of one token's K and V over all layers: `L · 2 · n_kv · hd · itemsize`."""
    return cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * jnp.dtype(dtype).itemsize


def _pad_id(cfg: ModelConfig, pad_id: int | None) -> int:
    if pad_id is not None:
        return int(pad_id)
    if cfg.pad_token_id is not None:
        return int(cfg.pad_token_id)
    return int(cfg.eos_ids[0]) if cfg.eos_ids else 0


def _check_gist_id(cfg: ModelConfig, gist_id: int, adapters: Adapters | None) -> None:
    if gist_id < cfg.vocab_size:
        raise GistCacheError(
            f"gist id {gist_id} is a real token (vocabulary size {cfg.vocab_size}); gist tokens take ids >= "
            f"{cfg.vocab_size} and read their embedding from Adapters(embeddings=...)"
        )
    rows = None if adapters is None or adapters.embeddings is None else adapters.embeddings.shape[0]
    if rows is None or gist_id - cfg.vocab_size >= rows:
        raise GistCacheError(
            f"gist id {gist_id} needs row {gist_id - cfg.vocab_size} of Adapters(embeddings=...), which holds "
            f"{rows or 0} rows; pass the trained <GIST> embedding (the run's 'gist' tree)"
        )


# --------------------------------------------------------------------------- compress


@functools.partial(jax.jit, static_argnames=("cfg", "gist_id", "num_gist", "attn_impl", "compute_dtype"))
def _compress(
    params: dict,
    tokens: Int[Array, "b t"],
    valid: Bool[Array, "b t"],
    adapters: Adapters | None,
    *,
    cfg: ModelConfig,
    gist_id: int,
    num_gist: int,
    attn_impl: str = "xla",
    compute_dtype=None,
) -> GistCache:
    b, t = tokens.shape
    positions = positions_from_valid(valid)
    mask = gist_mask(tokens, gist_id, valid, "gist")  # every position is at/before the last gist: causal ∧ pad
    out = forward(
        params, tokens, cfg=cfg, positions=positions, mask=mask, adapters=adapters,
        cache=init_cache(cfg, b, t, compute_dtype or jnp.float32), return_logits=False, attn_impl=attn_impl,
        compute_dtype=compute_dtype,
    )
    keep = slice(t - num_gist, t)  # left padding: the gist span is always the last k slots
    return GistCache(out.cache["k"][:, :, keep], out.cache["v"][:, :, keep], positions[:, -1] + 1)


def compress(
    params: dict,
    cfg: ModelConfig,
    prefixes: Sequence[Sequence[int]],
    *,
    gist_id: int,
    num_gist_tokens: int,
    adapters: Adapters | None,
    max_length: int | None = None,
    pad_id: int | None = None,
    bucket: int = 16,
    attn_impl: str = "xla",
    compute_dtype=None,
) -> GistCache:
    """Compress each prefix (template head + instruction, token ids) into `num_gist_tokens` gist K/V.

    Args:
      prefixes: one token list per row: everything BEFORE the gist span (`GistExample.prefix`).
      gist_id: the `<GIST>` id (>= vocab size); k copies are appended to every prefix.
      adapters: the trained trees: `embeddings` holds the `<GIST>` row; `lora` if the base was adapted.
      max_length: if given, a prefix + k gist tokens longer than this is an error (the prompt budget).
    Returns:
      `GistCache` with one row per prefix.
    """
    if num_gist_tokens < 1:
        raise GistCacheError(f"num_gist_tokens must be >= 1, got {num_gist_tokens}")
    if not prefixes:
        raise GistCacheError("no instructions to compress")
    _check_gist_id(cfg, gist_id, adapters)
    rows = []
    for i, p in enumerate(prefixes):
        p = [int(x) for x in p]
        if not p:
            raise GistCacheError(f"instruction {i} is empty: there is nothing to compress")
        if gist_id in p:
            raise GistCacheError(f"instruction {i} already contains the gist id {gist_id}; pass the part before it")
        if max_length is not None and len(p) + num_gist_tokens > max_length:
            raise GistCacheError(
                f"instruction {i} has {len(p)} tokens: no room for {num_gist_tokens} gist token(s) within "
                f"max_length={max_length}; shorten the instruction or raise max_length"
            )
        rows.append(p + [gist_id] * num_gist_tokens)
    check_length(cfg, max(map(len, rows)), "an instruction plus its gist tokens")
    tokens, valid = left_pad(rows, _pad_id(cfg, pad_id), bucket)
    return _compress(
        params, jnp.asarray(tokens), jnp.asarray(valid), adapters, cfg=cfg, gist_id=int(gist_id),
        num_gist=int(num_gist_tokens), attn_impl=attn_impl, compute_dtype=compute_dtype,
    )


# --------------------------------------------------------------------------- extend + decode


def _extend_state(cache: GistCache, valid: Array, extra: int, hide_gist: Array):
    """Cache buffers `[G gist][p input][extra]`, key validity, input positions and the input-block mask.

    `hide_gist` is a traced bool scalar, so gist and neg_control decoding share one compiled program."""
    b, p = valid.shape
    g = cache.num_gist
    s = g + p + extra

    def grow(x):
        return jnp.concatenate([x, jnp.zeros(x.shape[:2] + (p + extra,) + x.shape[3:], x.dtype)], axis=2)

    kv = {"k": grow(cache.k), "v": grow(cache.v)}
    key_valid = jnp.concatenate(
        [jnp.broadcast_to(~hide_gist, (b, g)), valid, jnp.zeros((b, extra), bool)], axis=1
    )  # (B, S)
    positions = cache.offset[:, None] + positions_from_valid(valid)  # continue from P_b + G, not from G
    causal = jnp.arange(s)[None, :] <= (g + jnp.arange(p))[:, None]  # (p, S)
    mask = causal[None, None] & key_valid[:, None, None, :]
    return kv, key_valid, positions, mask


@functools.partial(jax.jit, static_argnames=("cfg", "attn_impl", "compute_dtype"))
def _forward_cached(params, cache, tokens, valid, adapters, *, cfg, hide_gist, attn_impl="xla", compute_dtype=None):
    kv, _, positions, mask = _extend_state(cache, valid, 0, hide_gist)
    out = forward(params, tokens, cfg=cfg, positions=positions, mask=mask, adapters=adapters, cache=kv,
                  cache_index=cache.num_gist, attn_impl=attn_impl, compute_dtype=compute_dtype)
    return out.logits


def forward_cached(
    params: dict,
    cfg: ModelConfig,
    cache: GistCache,
    tokens: Int[Array, "b t"],
    valid: Bool[Array, "b t"],
    *,
    adapters: Adapters | None = None,
    hide_gist: bool = False,
    attn_impl: str = "xla",
    compute_dtype=None,
) -> Array:
    """Teacher-forced logits `(B, T, V)` of left-padded tokens after the gist span, read against `cache`.

    Equals the logits of the full gisted sequence `prefix · <GIST>×k · tokens` under the gist mask (or the
    neg_control mask with `hide_gist`) at the positions of `tokens`.
    """
    if cache.batch != tokens.shape[0]:
        raise GistCacheError(f"the cache holds {cache.batch} rows but tokens has {tokens.shape[0]}; use take()")
    return _forward_cached(params, cache, jnp.asarray(tokens), jnp.asarray(valid), adapters, cfg=cfg,
                           hide_gist=jnp.asarray(bool(hide_gist)), attn_impl=attn_impl, compute_dtype=compute_dtype)


def _last_logits(params: dict, cfg: ModelConfig, final_hidden: Array) -> Array:
    h = final_hidden[:, -1]
    w = lm_head_weight(params, cfg)
    return jnp.einsum("bd,vd->bv", h.astype(w.dtype), w).astype(jnp.float32)


@functools.partial(
    jax.jit, static_argnames=("cfg", "max_new_tokens", "eos_ids", "pad_id", "attn_impl", "compute_dtype")
)
def _decode(
    params: dict,
    cache: GistCache,
    tokens: Int[Array, "b p"],
    valid: Bool[Array, "b p"],
    adapters: Adapters | None,
    hide_gist: Array,
    *,
    cfg: ModelConfig,
    max_new_tokens: int,
    eos_ids: tuple[int, ...],
    pad_id: int,
    attn_impl: str = "xla",
    compute_dtype=None,
):
    b, p = tokens.shape
    g = cache.num_gist
    run = functools.partial(forward, cfg=cfg, adapters=adapters, attn_impl=attn_impl, compute_dtype=compute_dtype,
                            return_logits=False)
    kv, key_valid, positions, mask = _extend_state(cache, valid, max_new_tokens, hide_gist)
    out = run(params, tokens, positions=positions, mask=mask, cache=kv, cache_index=g)
    first = jnp.argmax(_last_logits(params, cfg, out.final_hidden), axis=-1).astype(jnp.int32)
    eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)

    def is_eos(t):
        return jnp.any(t[:, None] == eos[None, :], axis=-1)

    state = {
        "step": jnp.int32(1), "cache": out.cache, "last": first, "pos": positions[:, -1] + 1, "done": is_eos(first),
        "length": jnp.where(is_eos(first), 0, 1).astype(jnp.int32),
        "buf": jnp.full((b, max_new_tokens), pad_id, jnp.int32).at[:, 0].set(first), "key_valid": key_valid,
    }

    def cond(st):
        return (st["step"] < max_new_tokens) & ~jnp.all(st["done"])

    def body(st):
        idx = g + p + st["step"] - 1  # cache slot of the token being fed
        kvalid = st["key_valid"].at[:, idx].set(True)
        o = run(params, st["last"][:, None], positions=st["pos"][:, None], mask=kvalid[:, None, None, :],
                cache=st["cache"], cache_index=idx)
        nxt = jnp.argmax(_last_logits(params, cfg, o.final_hidden), axis=-1).astype(jnp.int32)
        nxt = jnp.where(st["done"], pad_id, nxt)
        stop = is_eos(nxt) & ~st["done"]
        return {
            "step": st["step"] + 1, "cache": o.cache, "last": nxt, "pos": st["pos"] + 1, "done": st["done"] | stop,
            "length": st["length"] + (~(st["done"] | stop)).astype(jnp.int32),
            "buf": st["buf"].at[:, st["step"]].set(nxt), "key_valid": kvalid,
        }

    st = jax.lax.while_loop(cond, body, state)
    return st["buf"], st["length"]


def decode(
    params: dict,
    cfg: ModelConfig,
    cache: GistCache,
    inputs: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 128,
    adapters: Adapters | None = None,
    eos_ids: Sequence[int] | None = None,
    pad_id: int | None = None,
    hide_gist: bool = False,
    bucket: int = 16,
    attn_impl: str = "xla",
    compute_dtype=None,
) -> Generation:
    """Greedy-decode each input (the tokens after the gist span: `GistExample.suffix`) against its cache row.

    `cache` holds one row per input (`GistCache.take` to share an instruction), or a single row that every
    input shares. `hide_gist=True` decodes the negative control. Rows stop at an EOS id (default
    `cfg.eos_ids`); `Generation.rows()` gives the new tokens without the EOS.
    """
    if max_new_tokens < 1:
        raise GistCacheError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not inputs:
        raise GistCacheError("no inputs to decode")
    if any(len(x) == 0 for x in inputs):
        raise GistCacheError("every input needs at least one token (at least the assistant header)")
    if cache.batch == 1 and len(inputs) > 1:
        cache = cache.broadcast(len(inputs))
    if cache.batch != len(inputs):
        raise GistCacheError(f"the cache holds {cache.batch} instructions but {len(inputs)} inputs were given")
    offset = np.asarray(cache.offset)
    longest = int(max(o + len(x) for o, x in zip(offset, inputs)))
    check_length(cfg, longest + max_new_tokens,
                 f"a gisted prompt of {longest} positions plus {max_new_tokens} new tokens")
    eos = tuple(int(e) for e in (cfg.eos_ids if eos_ids is None else eos_ids))
    pad = _pad_id(cfg, pad_id)
    tokens, valid = left_pad(inputs, pad, bucket)
    buf, lengths = _decode(
        params, cache, jnp.asarray(tokens), jnp.asarray(valid), adapters, jnp.asarray(bool(hide_gist)), cfg=cfg,
        max_new_tokens=int(max_new_tokens), eos_ids=eos, pad_id=pad, attn_impl=attn_impl, compute_dtype=compute_dtype,
    )
    return Generation(np.asarray(buf), np.asarray(lengths))
