"""The document memory module: a small gated MLP on one block's output, selected by a document key.

    h' = h + act( W_lmm · W_down( act(W_up h) ⊙ σ(W_gate k_d + b_gate) ) )        (biases omitted)

`m = memory_units` hidden units (upstream 32); `k_d ∈ R^key_dim` (upstream 2) is a FIXED row of an
orthogonal init (gain √2) per document; σ is tanh (signed selection) or relu (sparse selection); every
weight is orthogonal-initialised with gain √2 and zero biases, as upstream. With `key=None` the gate is
skipped (upstream's module with no key set): the base model itself is the block without the module.
Only this tree trains; the base model is frozen.

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
NEGATIVE_KEYS = ("other", "random", "zero")
GAIN = float(np.sqrt(2.0))


@dataclasses.dataclass(frozen=True)
class DocMemConfig:
    d_model: int
    memory_units: int = 32
    key_dim: int = 2
    key_activation: str = "tanh"  # tanh (signed) | relu (sparse)
    act: str = "gelu"  # the LM's own activation (upstream --lm_act)

    def __post_init__(self):
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
    return {name: {"w": _orthogonal(k, shape), "b": jnp.zeros((shape[0],), jnp.float32)}
            for k, (name, shape) in zip(keys, shapes.items())}


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


def selection(params: dict[str, Any], key: Float[Array, "b k"], c: DocMemConfig) -> Float[Array, "b m"]:
    """The gate `σ(W_gate k + b)` a key selects: which memory units a document uses (its L0/L2 are metrics)."""
    g = key.astype(jnp.float32) @ params["gate"]["w"].T + params["gate"]["b"]
    return jnp.tanh(g) if c.key_activation == "tanh" else jax.nn.relu(g)


def docmem_apply(
    params: dict[str, Any], h: Float[Array, "b t d"], key: Float[Array, "b k"] | None, c: DocMemConfig
) -> Float[Array, "b t d"]:
    """`h + act(W_lmm W_down(act(W_up h) ⊙ σ(W_gate key + b)))`, one key per row (`key=None`: no gate)."""
    act = _act(c.act)
    x = act(h.astype(jnp.float32) @ params["up"]["w"].T + params["up"]["b"])
    if key is not None:
        x = x * selection(params, key, c)[:, None, :]
    x = x @ params["down"]["w"].T + params["down"]["b"]
    x = x @ params["lmm"]["w"].T + params["lmm"]["b"]
    return (h.astype(jnp.float32) + act(x)).astype(h.dtype)


@dataclasses.dataclass(frozen=True)
class DocMemHook:
    """The module as a block hook for `forward(modules=BlockModules(hooks={i: Module(DocMemHook(c), params)}),
    module_ctx={"doc_key": (B, key_dim) or None})`: returns the increment `h' - h` (the seam adds it)."""

    c: DocMemConfig

    def __call__(self, params, h, ctx):
        key = None if ctx is None else ctx.get("doc_key")
        return (docmem_apply(params, h, key, self.c).astype(jnp.float32) - h.astype(jnp.float32)).astype(h.dtype)
