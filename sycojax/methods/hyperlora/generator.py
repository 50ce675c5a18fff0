"""The generator: a context's pooled hidden states -> an ordinary LoRA tree, in one pass.

    pooled (B, n, D) ─ standardise (x − shift)·scale, clip ±4 ─ RMS-normalise each depth ─ flatten
                     ─ Linear (n·D → H) ─ GELU ─ z (B, H)
    for every targeted (layer l, module m) with weight (out, in):
        a = z W_a[l] (B, r, K),   b = z W_b[l] (B, K, r)             coefficients, generated
        A = A₀[l] + a U[l]        U (K, in): a learned basis shared by every context
        B = B₀[l] + V[l] b        V (out, K): the same, for B
    (A₀, B₀): a learned unconditional LoRA, what every context starts from (the control "no context").

The output has `init_lora`'s exact paths, shapes (plus a leading batch axis for batched input) and dtypes,
so everything that takes a LoRA takes it: `Adapters(lora_per_row=True)` for a batch of contexts,
`adapters.lora_row` + `merge_lora` / `export_peft` / `generate` for one. At init `V = 0` and `B₀ = 0`,
so the generated LoRA has `B = 0`: the base model exactly, as a fresh `init_lora`.

`reader_norm` (shift 0, scale 1 at init) is not trained: `set_reader_norm` sets it from the training contexts'
pooled states (per depth and dimension: mean, 1/std), so the few dimensions where every context's mean is
huge (the residual stream's outlier features) no longer drown what differs between contexts.

Params (`init_generator`):
    {"encoder": {"weight": (n, D, H), "bias": (H,)},
     "modules": {root: {"layers": {block: {name: {"coef_A": (L, H, r, K), "coef_B": (L, H, K, r),
                                                 "basis_A": (L, K, in), "basis_B": (L, out, K)}}}}},
     "unconditional": init_lora's tree,
     "reader_norm": {"shift": (n, D), "scale": (n, D)}}
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from sycojax.adapters.lora import init_lora
from sycojax.methods.hyperlora.spec import HyperConfig, HyperError
from sycojax.models import Adapters, ModelConfig, param_shapes

_EPS = 1e-6
_CLIP = 4.0  # standardised reader states are clipped to ±4 standard deviations


def _weight_shapes(cfg: ModelConfig) -> dict:
    """The base param tree as `ShapeDtypeStruct`s (what `init_lora` reads of it: the weights' shapes)."""
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), param_shapes(cfg),
                        is_leaf=lambda x: isinstance(x, tuple))


def init_generator(rng: jax.Array, cfg_model: ModelConfig, hc: HyperConfig) -> dict:
    """Fresh generator params (layout in the module docstring); fp32. No base weights needed."""
    k_enc, k_unc, k_mod = jax.random.split(rng, 3)
    unconditional = init_lora(_weight_shapes(cfg_model), cfg_model, hc.lora, k_unc)
    n, d, h, k = len(hc.depths(cfg_model)), cfg_model.hidden_size, hc.hidden, hc.basis
    encoder = {"weight": jax.random.normal(k_enc, (n, d, h), jnp.float32) / (n * d) ** 0.5,
               "bias": jnp.zeros((h,), jnp.float32)}
    (root, tree), = unconditional.items()
    modules: dict = {}
    for i, (block, name, ab) in enumerate(_targets(tree["layers"])):
        n_layers, r, d_in = ab["lora_A"].shape
        d_out = ab["lora_B"].shape[1]
        ka, kb, ku = jax.random.split(jax.random.fold_in(k_mod, i), 3)
        modules.setdefault(block, {})[name] = {
            # `a U` starts at a tenth of A₀ (kaiming-uniform, as init_lora): an untrained generator's LoRA for an
            # unusual context is not a large random one once B grows (SmolLM2, lr 2e-3: a full-size start made the
            # validation contexts' mean KL rise for 50 steps)
            "coef_A": 0.1 * jax.random.normal(ka, (n_layers, h, r, k), jnp.float32) / (h * k) ** 0.5,
            "coef_B": jax.random.normal(kb, (n_layers, h, k, r), jnp.float32) / (h * k) ** 0.5,
            "basis_A": jax.random.uniform(ku, (n_layers, k, d_in), jnp.float32, -d_in**-0.5, d_in**-0.5),
            "basis_B": jnp.zeros((n_layers, d_out, k), jnp.float32),
        }
    reader_norm = {"shift": jnp.zeros((n, d), jnp.float32), "scale": jnp.ones((n, d), jnp.float32)}
    return {"encoder": encoder, "modules": {root: {"layers": modules}}, "unconditional": unconditional,
            "reader_norm": reader_norm}


TRAINED = ("encoder", "modules", "unconditional")  # the entries that train; `reader_norm` is set from data


def set_reader_norm(params: dict, pooled: Float[Array, "b n d"] | np.ndarray) -> dict:
    """`params` with `reader_norm` standardising these pooled states (the training contexts'): per depth and
    dimension, shift = mean, scale = 1 / std (std floored at 1e-3 of its depth's median std)."""
    x = np.asarray(pooled, np.float64)
    mean, std = x.mean(0), x.std(0)
    std = np.maximum(std, 1e-3 * np.median(std, axis=-1, keepdims=True) + 1e-12)
    return dict(params, reader_norm={"shift": jnp.asarray(mean, jnp.float32),
                                     "scale": jnp.asarray(1.0 / std, jnp.float32)})


def split_trained(params: dict) -> tuple[dict, dict]:
    """(the entries that train, `reader_norm`): the loop's trainable and frozen parts of a generator."""
    return {k: params[k] for k in TRAINED}, params["reader_norm"]


def _targets(layers: dict):
    """(block, module name, its leaf dict) for every targeted linear of a LoRA-shaped `layers` tree."""
    for block, mods in layers.items():
        for name, leaf in mods.items():
            yield block, name, leaf


def generate_lora(params: dict, pooled: Float[Array, "b n d"] | Float[Array, "n d"], hc: HyperConfig) -> dict:
    """The LoRA tree for each context: `lora_A (B, L, r, in)`, `lora_B (B, L, out, r)` for pooled states
    `(B, n, D)` (`pool_context`), or `init_lora`'s unbatched shapes for `(n, D)`. Jittable; `hc` only checks
    that `params` were made for this rank, basis and width (a checkpoint for another setting fails here)."""
    _check(params, pooled, hc)
    batched = pooled.ndim == 3
    x = (pooled if batched else pooled[None]).astype(jnp.float32)
    if "reader_norm" in params:  # standardised, and clipped: a context far out of the training ones stays in range
        x = jnp.clip((x - params["reader_norm"]["shift"]) * params["reader_norm"]["scale"], -_CLIP, _CLIP)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + _EPS)  # depths differ in scale: unit RMS each
    enc = params["encoder"]
    z = jax.nn.gelu(jnp.einsum("bnd,ndh->bh", x, enc["weight"]) + enc["bias"])

    def emit(m, unc):
        a = jnp.einsum("bh,lhrk->blrk", z, m["coef_A"])
        b = jnp.einsum("bh,lhkr->blkr", z, m["coef_B"])
        return {"lora_A": unc["lora_A"] + jnp.einsum("blrk,lki->blri", a, m["basis_A"]),
                "lora_B": unc["lora_B"] + jnp.einsum("lok,blkr->blor", m["basis_B"], b)}

    (root, unc), = params["unconditional"].items()
    mods = params["modules"][root]["layers"]
    layers: dict = {}
    for block, name, ab in _targets(unc["layers"]):
        layers.setdefault(block, {})[name] = emit(mods[block][name], ab)
    lora = {root: {"layers": layers}}
    return lora if batched else jax.tree.map(lambda y: y[0], lora)


def _check(params: dict, pooled: Array, hc: HyperConfig) -> None:
    n, _, h = params["encoder"]["weight"].shape
    any_module = next(leaf for *_, leaf in _targets(next(iter(params["modules"].values()))["layers"]))
    _, _, r, k = any_module["coef_A"].shape
    if (r, k, h) != (hc.rank, hc.basis, hc.hidden):
        raise HyperError(f"generator params are for rank={r}, basis={k}, hidden={h}, but the HyperConfig says "
                         f"rank={hc.rank}, basis={hc.basis}, hidden={hc.hidden}; use the config saved with them")
    if pooled.ndim not in (2, 3) or pooled.shape[-2] != n:
        raise HyperError(f"pooled states must be (B, {n}, D) or ({n}, D) (the generator reads {n} depths); "
                         f"got {pooled.shape}")


def unconditional_lora(params: dict) -> dict:
    """The learned unconditional LoRA alone (the no-context control), `init_lora`'s shapes."""
    return params["unconditional"]


def as_adapters(lora: dict, hc: HyperConfig) -> Adapters:
    """`Adapters` for a generated LoRA: per-row when it has the batch axis (`lora_A` 4-D), else shared."""
    per_row = jax.tree.leaves(lora)[0].ndim == 4
    return Adapters(lora=lora, lora_scale=hc.lora.scale, lora_per_row=per_row)
