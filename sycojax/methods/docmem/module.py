"""The document memory module: a small gated MLP on one block's output, selected by a document key.

    h' = h + act( W_lmm · W_down( act(W_up h) ⊙ σ(W_gate k_d + b_gate) ) )        (biases omitted)

`m = memory_units` hidden units (upstream 32); `k_d ∈ R^key_dim` is a FIXED row of an orthogonal init
(gain √2) per document, so `key_dim >= number of documents`; σ is tanh (signed selection) or relu (sparse
selection); every weight is orthogonal-initialised with gain √2 and zero biases, as upstream. The module is
active only when a key is given (upstream): `key=None` returns `h`, the base model.

Two gates:
- `dense` (upstream): every token runs all `m` units, so a bank sized to the number of documents costs
  linearly in it per token.
- `topk` (ours, for hundreds of documents): the key's gate `σ(W_gate k_d)` keeps only its `top_k` largest
  units (by magnitude), and each row gathers just those rows of `W_up` and columns of `W_down`: per token
  `O(top_k · D + D²)` whatever the bank size or the number of documents (the selection itself is once per
  document, `O(m · key_dim)`, and can be tabulated). It has no bias after the gate, so a zero key selects
  nothing and gives back the base model exactly: forgetting a document is zeroing its key.

Shapes follow the base model's convention, `(out, in)` weights: `up (m, D)`, `gate (m, key_dim)`,
`down (D, m)`, `lmm (D, D)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

KEY_ACTIVATIONS = ("tanh", "relu")
GATES = ("dense", "topk")
NEGATIVE_KEYS = ("other", "random", "zero")
GAIN = float(np.sqrt(2.0))


@dataclasses.dataclass(frozen=True)
class DocMemConfig:
    d_model: int
    memory_units: int = 32
    key_dim: int = 2
    key_activation: str = "tanh"  # tanh (signed) | relu (sparse)
    act: str = "gelu"  # the LM's own activation (upstream --lm_act)
    gate: str = "dense"  # dense (upstream) | topk (top_k units of the bank per document)
    top_k: int = 0

    def __post_init__(self):
        if self.gate not in GATES:
            raise ValueError(f"gate={self.gate!r}; choose {' or '.join(GATES)}")
        if self.gate == "topk" and not 1 <= self.top_k <= self.memory_units:
            raise ValueError(f"top_k={self.top_k} with memory_units={self.memory_units}: the topk gate keeps "
                             "1..memory_units units per document")
        if self.key_activation not in KEY_ACTIVATIONS:
            raise ValueError(f"key_activation={self.key_activation!r}; choose {' or '.join(KEY_ACTIVATIONS)}")
        if self.act not in ("gelu", "relu", "silu"):
            raise ValueError(f"act={self.act!r}; choose gelu, relu or silu")
        if self.memory_units < 1 or self.key_dim < 1:
            raise ValueError(f"memory_units={self.memory_units}, key_dim={self.key_dim}: both must be >= 1")


def _orthogonal(rng: jax.Array, shape: tuple[int, int]) -> jax.Array:
    return jax.nn.initializers.orthogonal(scale=GAIN)(rng, shape, jnp.float32)


def init_docmem(rng: jax.Array, c: DocMemConfig) -> dict[str, dict[str, jax.Array]]:
    """The module's trainable tree (fp32)."""
    shapes = {"up": (c.memory_units, c.d_model), "gate": (c.memory_units, c.key_dim),
              "down": (c.d_model, c.memory_units), "lmm": (c.d_model, c.d_model)}
    keys = jax.random.split(rng, len(shapes))
    biased = ("up",) if c.gate == "topk" else tuple(shapes)  # topk: nothing after the gate, so key 0 = base
    return {name: {"w": _orthogonal(k, shape), **({"b": jnp.zeros((shape[0],), jnp.float32)} if name in biased else {})}
            for k, (name, shape) in zip(keys, shapes.items())}


def check_key_dim(key_dim: int, num_documents: int) -> None:
    """Orthogonal document keys need `key_dim >= num_documents`; the message names the fix."""
    if key_dim < num_documents:
        raise ValueError(f"key_dim={key_dim} is too small for orthogonal keys of {num_documents} documents: "
                         f"set key_dim >= {num_documents} (0 = one dimension per document)")


def document_keys(rng: jax.Array, num_documents: int, key_dim: int) -> jax.Array:
    """`(num_documents, key_dim)` fixed document keys: rows of an orthogonal matrix, gain √2 (upstream
    `layer_init(nn.Linear(key_dim, n))`); with more documents than `key_dim` they cannot all be orthogonal."""
    return _orthogonal(rng, (num_documents, key_dim))


def negative_keys(rng: jax.Array, keys: jax.Array, doc_ids: jax.Array, kind: str) -> jax.Array:
    """A negative key per row: `other` (another document's key, uniformly), `random` (N(0, 1)), `zero`."""
    if kind == "zero":
        return jnp.zeros((doc_ids.shape[0], keys.shape[1]), keys.dtype)
    if kind == "random":
        return jax.random.normal(rng, (doc_ids.shape[0], keys.shape[1]), keys.dtype)
    if kind == "other":
        if keys.shape[0] < 2:
            raise ValueError("negative key 'other' needs at least 2 documents; use random or zero")
        shift = jax.random.randint(rng, doc_ids.shape, 1, keys.shape[0])  # never the document itself
        return keys[(doc_ids + shift) % keys.shape[0]]
    raise ValueError(f"unknown negative key {kind!r}; choose {', '.join(NEGATIVE_KEYS)}")


def _act(name: str):
    return {"gelu": lambda x: jax.nn.gelu(x, approximate=False), "relu": jax.nn.relu, "silu": jax.nn.silu}[name]


def _gate(params: dict[str, Any], key: Float[Array, "b k"], c: DocMemConfig) -> Float[Array, "b m"]:
    g = key.astype(jnp.float32) @ params["gate"]["w"].T
    if "b" in params["gate"]:
        g = g + params["gate"]["b"]
    return jnp.tanh(g) if c.key_activation == "tanh" else jax.nn.relu(g)


def topk_units(params: dict[str, Any], key: Float[Array, "b k"], c: DocMemConfig):
    """The topk gate: `(units (B, top_k) int32, values (B, top_k))`, the `top_k` largest `|σ(W_gate k)|`."""
    g = _gate(params, key, c)
    _, units = jax.lax.top_k(jnp.abs(g), c.top_k)
    return units, jnp.take_along_axis(g, units, axis=1)


def selection(params: dict[str, Any], key: Float[Array, "b k"], c: DocMemConfig) -> Float[Array, "b m"]:
    """The gate a key selects over all `m` units (topk: zero outside its units): which memory units a
    document uses (its L0/L2 and pairwise distances are metrics)."""
    if c.gate == "dense":
        return _gate(params, key, c)
    units, values = topk_units(params, key, c)
    rows = jnp.arange(key.shape[0])[:, None]
    return jnp.zeros((key.shape[0], c.memory_units), jnp.float32).at[rows, units].set(values)


def docmem_apply(
    params: dict[str, Any], h: Float[Array, "b t d"], key: Float[Array, "b k"] | None, c: DocMemConfig
) -> Float[Array, "b t d"]:
    """`h + act(W_lmm W_down(act(W_up h) ⊙ σ(W_gate key + b)))`, one key per row (`key=None`: `h`)."""
    if key is None:
        return h
    act = _act(c.act)
    hf = h.astype(jnp.float32)
    if c.gate == "dense":
        x = act(hf @ params["up"]["w"].T + params["up"]["b"]) * _gate(params, key, c)[:, None, :]
        x = x @ params["down"]["w"].T + params["down"]["b"]
        x = x @ params["lmm"]["w"].T + params["lmm"]["b"]
    else:  # gather each row's units: (B, top_k, D) slices of the bank
        units, values = topk_units(params, key, c)
        up, b_up = params["up"]["w"][units], params["up"]["b"][units]
        down = jnp.swapaxes(params["down"]["w"], 0, 1)[units]
        x = act(jnp.einsum("btd,bkd->btk", hf, up) + b_up[:, None, :]) * values[:, None, :]
        x = jnp.einsum("btk,bkd->btd", x, down) @ params["lmm"]["w"].T
    return (hf + act(x)).astype(h.dtype)


@dataclasses.dataclass(frozen=True)
class DocMemHook:
    """The module as a block hook for `forward(modules=BlockModules(hooks={i: Module(DocMemHook(c), params)}),
    module_ctx={"doc_key": (B, key_dim) or None})`: returns the increment `h' - h` (the seam adds it)."""

    c: DocMemConfig

    def __call__(self, params, h, ctx):
        key = None if ctx is None else ctx.get("doc_key")
        return (docmem_apply(params, h, key, self.c).astype(jnp.float32) - h.astype(jnp.float32)).astype(h.dtype)
