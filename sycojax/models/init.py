"""Parameter shapes and random initialisation (tiny random models for tests and benchmarks)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sycojax.models.config import ModelConfig


def param_shapes(cfg: ModelConfig) -> dict:
    """The param tree of `cfg` with shape tuples as leaves (see `config.py` for the layout)."""
    n, d, f, v = cfg.num_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    hq, hkv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim

    def lin(o, i, bias=False):
        p = {"weight": (n, o, i)}
        if bias:
            p["bias"] = (n, o)
        return p

    if cfg.arch == "llama":
        ab, mb = cfg.attention_bias, cfg.mlp_bias
        tree = {
            "model": {
                "embed_tokens": {"weight": (v, d)},
                "layers": {
                    "input_layernorm": {"weight": (n, d)},
                    "self_attn": {
                        "q_proj": lin(hq, d, ab), "k_proj": lin(hkv, d, ab),
                        "v_proj": lin(hkv, d, ab), "o_proj": lin(d, hq, ab),
                    },
                    "post_attention_layernorm": {"weight": (n, d)},
                    "mlp": {"gate_proj": lin(f, d, mb), "up_proj": lin(f, d, mb), "down_proj": lin(d, f, mb)},
                },
                "norm": {"weight": (d,)},
            }
        }
        if not cfg.tie_word_embeddings:
            tree["lm_head"] = {"weight": (v, d)}
        return tree
    ln = {"weight": (n, d), "bias": (n, d)}
    return {
        "gpt_neox": {
            "embed_in": {"weight": (v, d)},
            "layers": {
                "input_layernorm": dict(ln),
                "post_attention_layernorm": dict(ln),
                "attention": {"query_key_value": lin(3 * hq, d, True), "dense": lin(d, hq, True)},
                "mlp": {"dense_h_to_4h": lin(f, d, True), "dense_4h_to_h": lin(d, f, True)},
            },
            "final_layer_norm": {"weight": (d,), "bias": (d,)},
        },
        "embed_out": {"weight": (v, d)},
    }


def _is_shape(x):
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def num_params(cfg: ModelConfig) -> int:
    return int(sum(np.prod(s) for s in jax.tree.leaves(param_shapes(cfg), is_leaf=_is_shape)))


def init_params(cfg: ModelConfig, key: jax.Array, std: float = 0.02, dtype=jnp.float32) -> dict:
    """Random params: N(0, std) weights, unit norm scales, zero biases (norm biases perturbed)."""
    shapes = param_shapes(cfg)
    paths, treedef = jax.tree.flatten_with_path(shapes, is_leaf=_is_shape)
    keys = jax.random.split(key, len(paths))
    leaves = []
    for (path, shape), k in zip(paths, keys):
        names = [p.key for p in path]
        if "norm" in "".join(names) or "layernorm" in "".join(names):
            base = jnp.ones(shape) if names[-1] == "weight" else jnp.zeros(shape)
            leaves.append((base + 0.1 * jax.random.normal(k, shape)).astype(dtype))
        elif names[-1] == "bias":
            leaves.append((0.02 * jax.random.normal(k, shape)).astype(dtype))
        else:
            leaves.append((std * jax.random.normal(k, shape)).astype(dtype))
    return jax.tree.unflatten(treedef, leaves)
