"""kNN memory layers that replace a block's feed-forward (the fifth seed, "Let Language Models be Language Models").

Each is an FF-replacement module (`models.BlockModules(ffn={i: Module(KNNFFN(c, i), params)})`) reading the
block's normed FF input `x (B, T, D)`:

- **featural**: `q = norm(x W_q)`; the top-k stored keys nearest `q` and their values; weights
  `softmax(s · q·K)` over them; `out = (Σ w V) W_o`. The store's entries are written from the model
  being distilled: key `q`, value the ORIGINAL block's FF output on the same `x` (`distill.candidates`),
  so the store is a discrete, growing sample of what the FF computes; the original FF is only read
  while writing entries, never at inference.
- **associative**: `q, k = norm(x W_q), norm(x W_k)`, `v = x W_v`; the top-k stored keys nearest `q`;
  `(k, v)` of a token is inserted where all its top-k distances are large (the store does the test);
  attention of `q` over the retrieved keys/values; `out = attn W_o`.
- **product_key** (Memory Layers at Scale): `q = x W_q` split in halves, each scored against `√N`
  sub-keys; the top-k of the Cartesian product of the two top-k lists; `out = Σ softmax(s) V[i]`
  over N trainable values. The trainable comparison: no store.
- **ablated**: the FF removed (`out = 0`): the lower bound.

Retrieval is exact top-k on device over the store's capacity-shaped arrays (`ctx[store_key(i)] =
(keys, values, valid)`, fed as part of the frozen tree): the store is not differentiable, so its
outputs enter through `straight_through`, the seed's estimator: `dQuery = dKeyReturned`,
`dKeyInserted = dKeyReturned`, `dValueInserted = dValueReturned` (summed over the k returned).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

KINDS = ("ablated", "featural", "associative", "product_key")
STORE_KINDS = ("featural", "associative")


def store_key(block: int) -> str:
    """The `module_ctx` entry that holds block `block`'s store arrays."""
    return f"store{block}"


@dataclasses.dataclass(frozen=True)
class KNNConfig:
    kind: str
    d_model: int
    key_dim: int = 128  # featural / associative keys; product-key: the query (two halves of key_dim // 2)
    k: int = 16  # entries returned per query
    sub_keys: int = 128  # product-key: √N sub-keys per half (N = sub_keys² values)
    init_scale: float = 16.0  # initial softmax scale over cosine similarities
    value_gain: float = 1.0  # product-key: values are stored divided by this (Adam's steps on them scale by it:
                             # each value is read by few tokens per step, so it trains at a higher rate)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}: choose one of {', '.join(KINDS)}")
        if self.k < 1 or self.key_dim < 2 or (self.kind == "product_key" and self.key_dim % 2):
            raise ValueError(f"k={self.k}, key_dim={self.key_dim}: need k >= 1 and key_dim >= 2 (even for product_key)")
        if self.kind == "product_key" and self.k > self.sub_keys:
            raise ValueError(f"k={self.k} > sub_keys={self.sub_keys}: product-key top-k needs k <= sub_keys")

    @property
    def value_dim(self) -> int:
        return self.d_model

    @property
    def uses_store(self) -> bool:
        return self.kind in STORE_KINDS


# --------------------------------------------------------------------------- straight-through estimator


@jax.custom_vjp
def straight_through(query, key_new, value_new, key_ret, value_ret):
    """`(key_ret, value_ret)` unchanged; backward by the seed's rule (shapes: q/k_new `(..., dk)`,
    v_new `(..., dv)`, returned `(..., k, dk)` / `(..., k, dv)`): dq = dk_new = Σ_k dK_ret, dv_new = Σ_k dV_ret,
    and nothing into the store."""
    return key_ret, value_ret


def _st_fwd(query, key_new, value_new, key_ret, value_ret):
    return (key_ret, value_ret), None


def _st_bwd(_, cot):
    dk, dv = cot
    dk_sum, dv_sum = dk.sum(-2), dv.sum(-2)
    return dk_sum, dk_sum, dv_sum, jnp.zeros_like(dk), jnp.zeros_like(dv)


straight_through.defvjp(_st_fwd, _st_bwd)


@jax.custom_vjp
def query_through(query, key_ret):
    """Featural memory's estimator: `key_ret` unchanged, `dQuery = Σ_k dKeyReturned` (the query is the key
    a featural layer inserts, so its key and query gradients are one)."""
    return key_ret


def _qt_fwd(query, key_ret):
    return key_ret, None


def _qt_bwd(_, dk):
    return dk.sum(-2), jnp.zeros_like(dk)


query_through.defvjp(_qt_fwd, _qt_bwd)


# --------------------------------------------------------------------------- params


def _orthogonal(rng, d_in: int, d_out: int):
    return jax.nn.initializers.orthogonal()(rng, (d_in, d_out), jnp.float32)


def init_knn(rng, c: KNNConfig) -> dict:
    """The trainable tree of one layer (fp32). Featural starts as the kNN regression of the FF it samples
    (`W_o = I`); associative and product-key start at the ablated model (`W_o = 0`, values ~ 0)."""
    d, dk = c.d_model, c.key_dim
    r = jax.random.split(rng, 4)
    if c.kind == "ablated":
        return {}
    if c.kind == "featural":
        return {"w_q": _orthogonal(r[0], d, dk), "w_o": jnp.eye(d, dtype=jnp.float32),
                "log_scale": jnp.asarray(math.log(c.init_scale), jnp.float32)}
    if c.kind == "associative":
        w = _orthogonal(r[0], d, dk)
        return {"w_q": w, "w_k": w, "w_v": jnp.eye(d, dtype=jnp.float32), "w_o": jnp.zeros((d, d), jnp.float32),
                "log_scale": jnp.asarray(math.log(c.init_scale), jnp.float32)}
    h = dk // 2
    return {"w_q": _orthogonal(r[0], d, dk),
            "sub_keys": jax.random.normal(r[1], (2, c.sub_keys, h), jnp.float32) / math.sqrt(h),
            "values": jax.random.normal(r[2], (c.sub_keys * c.sub_keys, d), jnp.float32) * 1e-3,
            "log_scale": jnp.asarray(math.log(c.init_scale), jnp.float32)}


def _normalize(x, eps: float = 1e-6):
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt(jnp.sum(x * x, -1, keepdims=True) + eps)


# --------------------------------------------------------------------------- the layers


def projections(p: dict, x, c: KNNConfig) -> dict:
    """What a store-backed layer computes from `x` before it looks anything up: `q` (and `k`, `v`)."""
    x = x.astype(jnp.float32)
    out = {"q": _normalize(x @ p["w_q"])}
    if c.kind == "associative":
        out["k"] = _normalize(x @ p["w_k"])
        out["v"] = x @ p["w_v"]
    return out


def lookup(q, keys, valid, k: int):
    """Exact top-k by cosine over the store: `(idx (..., k), sim (..., k))`; empty slots score -inf."""
    sim = jnp.einsum("...d,nd->...n", q, keys.astype(jnp.float32))
    sim = jnp.where(valid, sim, -jnp.inf)
    sim, idx = jax.lax.top_k(sim, k)
    return idx, sim


def _attend(scale, q, k_ret, v_ret, found):
    s = jnp.where(found, scale * jnp.einsum("...d,...kd->...k", q, k_ret), -1e30)
    w = jax.nn.softmax(s, axis=-1) * found  # no entry found: weight 0 (an empty store returns 0)
    return jnp.einsum("...k,...kd->...d", w, v_ret)


def store_layer(p: dict, x, store, c: KNNConfig):
    """Featural / associative output `(B, T, D)` and the retrieved slots `(B, T, k)` (hits, -1 where none)."""
    keys, values, valid = store
    pr = projections(p, x, c)
    q = pr["q"]
    idx, sim = lookup(jax.lax.stop_gradient(q), keys, valid, c.k)
    found = jnp.isfinite(sim)
    k_ret = jax.lax.stop_gradient(keys[idx].astype(jnp.float32))
    v_ret = jax.lax.stop_gradient(values[idx].astype(jnp.float32))
    if c.kind == "associative":
        k_ret, v_ret = straight_through(q, pr["k"], pr["v"], k_ret, v_ret)
    else:  # featural: the query is also the key it inserts; its value comes from the FF being distilled
        k_ret = query_through(q, k_ret)
    out = _attend(jnp.exp(p["log_scale"]), q, k_ret, v_ret, found) @ p["w_o"]
    return out, jnp.where(found, idx, -1)


def product_key_layer(p: dict, x, c: KNNConfig):
    """Product-key memory output `(B, T, D)` and the chosen value slots `(B, T, k)`."""
    q = (x.astype(jnp.float32) @ p["w_q"])
    h = c.key_dim // 2
    q1, q2 = _normalize(q[..., :h]), _normalize(q[..., h:])
    s1, i1 = jax.lax.top_k(q1 @ p["sub_keys"][0].T, c.k)
    s2, i2 = jax.lax.top_k(q2 @ p["sub_keys"][1].T, c.k)
    s = (s1[..., :, None] + s2[..., None, :]).reshape(*s1.shape[:-1], c.k * c.k)
    slot = (i1[..., :, None] * c.sub_keys + i2[..., None, :]).reshape(s.shape)
    s, j = jax.lax.top_k(s, c.k)
    slot = jnp.take_along_axis(slot, j, axis=-1)
    w = jax.nn.softmax(jnp.exp(p["log_scale"]) * s, axis=-1)
    return c.value_gain * jnp.einsum("...k,...kd->...d", w, p["values"][slot]), slot


@dataclasses.dataclass(frozen=True)
class KNNFFN:
    """The FF-replacement module of block `block` (hashable by value: static under `jit`)."""

    c: KNNConfig
    block: int

    def __call__(self, p: dict, x, ctx: Any):
        if self.c.kind == "ablated":
            return jnp.zeros_like(x)
        if self.c.kind == "product_key":
            return product_key_layer(p, x, self.c)[0].astype(x.dtype)
        return store_layer(p, x, ctx[store_key(self.block)], self.c)[0].astype(x.dtype)
