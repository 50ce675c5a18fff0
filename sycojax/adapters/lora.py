"""LoRA as a separate tree: init, merge into the base for export/fast inference, parameter counts.

For a base weight `W (out, in)` the patched layer computes `y = x Wᵀ + (α/r) · (x Aᵀ) Bᵀ` with
`A (r, in)` and `B (out, r)` (PEFT's names and layout, so export is a rename). `B = 0` at init, so a
fresh LoRA leaves the model unchanged. The tree mirrors the base paths with layers stacked:
`lora["model"]["layers"]["self_attn"]["q_proj"] = {"lora_A": (L, r, in), "lora_B": (L, out, r)}`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sycojax.models.config import ModelConfig

# short target names a user may give → HF module names, per architecture
ALIASES = {
    "llama": {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
              "down": "down_proj"},
    "gpt_neox": {"qkv": "query_key_value", "o": "dense", "dense": "dense", "up": "dense_h_to_4h",
                 "down": "dense_4h_to_h"},
}
ALL_LINEAR = "all"


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = (ALL_LINEAR,)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def resolve_targets(cfg: ModelConfig, targets) -> tuple[str, ...]:
    """Map user names (`q`, `q_proj`, `all`, ...) to this architecture's module names; unknown → error."""
    if isinstance(targets, str):
        targets = tuple(t.strip() for t in targets.split(",") if t.strip())
    names = cfg.linear_names
    out = []
    for t in targets:
        if t == ALL_LINEAR:
            out.extend(names)
        elif t in names:
            out.append(t)
        elif t in ALIASES[cfg.arch]:
            out.append(ALIASES[cfg.arch][t])
        else:
            valid = sorted(set(names) | set(ALIASES[cfg.arch]) | {ALL_LINEAR})
            raise ValueError(f"unknown LoRA target {t!r} for {cfg.arch}; valid: {', '.join(valid)}")
    if not out:
        raise ValueError("LoRA needs at least one target module")
    return tuple(dict.fromkeys(out))


def _root(cfg):
    return "model" if cfg.arch == "llama" else "gpt_neox"


def init_lora(params: dict, cfg: ModelConfig, lcfg: LoraConfig, key: jax.Array) -> dict:
    """A (kaiming-uniform, as PEFT) and B = 0 for every targeted linear of every layer."""
    if lcfg.rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {lcfg.rank}")
    targets = resolve_targets(cfg, lcfg.targets)
    layers = params[_root(cfg)]["layers"]
    tree: dict = {}
    i = 0
    for block, mods in layers.items():
        for name, p in (mods.items() if isinstance(mods, dict) else []):
            if name not in targets or not isinstance(p, dict) or "weight" not in p:
                continue
            n, out_dim, in_dim = p["weight"].shape
            bound = 1.0 / (in_dim**0.5)
            a = jax.random.uniform(jax.random.fold_in(key, i), (n, lcfg.rank, in_dim), jnp.float32, -bound, bound)
            tree.setdefault(block, {})[name] = {"lora_A": a, "lora_B": jnp.zeros((n, out_dim, lcfg.rank), jnp.float32)}
            i += 1
    return {_root(cfg): {"layers": tree}}


def merge_lora(params: dict, lora: dict, cfg: ModelConfig, scale: float) -> dict:
    """Base params with `W + scale · B A` folded in (a new tree; the inputs are untouched)."""
    root = _root(cfg)
    layers = dict(params[root]["layers"])
    for block, mods in lora[root]["layers"].items():
        layers[block] = dict(layers[block])
        for name, ab in mods.items():
            p = dict(layers[block][name])
            delta = jnp.einsum("lor,lri->loi", ab["lora_B"], ab["lora_A"]) * scale
            p["weight"] = (p["weight"] + delta.astype(p["weight"].dtype))
            layers[block][name] = p
    out = dict(params)
    out[root] = dict(params[root], layers=layers)
    return out


def stack_lora_rows(loras: list[dict]) -> dict:
    """LoRA trees of the same targets and rank -> one per-row tree (leaves `(B, L, ...)`, row `b` = `loras[b]`),
    for `Adapters(lora=..., lora_per_row=True)`: a batch whose rows each carry their own LoRA."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *loras)


def lora_row(lora_rows: dict, b: int) -> dict:
    """Row `b` of a per-row LoRA tree: an ordinary LoRA tree (for merge, export, generate)."""
    return jax.tree.map(lambda x: x[b], lora_rows)


def count(tree) -> int:
    return int(sum(x.size for x in jax.tree.leaves(tree)))
