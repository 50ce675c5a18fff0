"""Per-block modules: trainable trees that `forward` runs inside chosen blocks of the frozen base.

Two seams, for LLaMA and GPT-NeoX alike (`forward(..., modules=BlockModules(...), module_ctx=...)`):

- a **hook** on block `i`'s output: `h ← h + f(params, h, ctx)` (the residual stream leaving block `i`,
  which is what block `i + 1` reads and what `hidden_states[i + 1]` holds);
- an **FF replacement** in block `i`: the block's feed-forward `FF(x)` becomes `f(params, x, ctx)`, where
  `x` is the normed input the base FF would read (`post_attention_layernorm`; for GPT-NeoX's parallel
  residual the norm of the block's input). The result is added to the residual stream as the base FF's is.

`ctx` is `forward`'s `module_ctx`, handed unchanged to every module: the per-call inputs a module needs
(a document key `(B, k)`, a memory store's arrays, ...), as any pytree. `f` returns `(B, T, D)`; the
forward casts it to the compute dtype.

Each module is a `Module(apply, params)`: `params` is its own tree (a pytree leaf set, what trains),
`apply` is static under `jit` (part of the tree structure, like `Adapters.lora_scale`). `apply` must
therefore be hashable and the SAME object from call to call, or every call retraces: a module-level
function, or a frozen dataclass with `__call__` (hashed by value, like `model.BaseFFN`) — not a fresh
`lambda` / `functools.partial` built inside the loss.

A model without modules runs the single layer scan it always ran. With modules the layers are split
into runs: the plain blocks between two module blocks are scanned over a slice of the stacked params,
and each module block runs unrolled between them (see `model.forward`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flax import struct

#: `apply(params, h_or_x: (B, T, D), ctx) -> (B, T, D)`
ModuleFn = Callable[[Any, Any, Any], Any]


@struct.dataclass
class Module:
    """One module: its function (static) and its parameter tree (a pytree, what `jax.grad` sees)."""

    apply: ModuleFn = struct.field(pytree_node=False)
    params: Any = None

    def __call__(self, x, ctx):
        return self.apply(self.params, x, ctx)


@struct.dataclass
class BlockModules:
    """Modules per block index (0-based, `0 <= i < num_layers`).

    hooks: `{i: Module}` applied to block `i`'s output, `h ← h + f(params, h, ctx)`.
    ffn:   `{i: Module}` replacing block `i`'s feed-forward, `FF(x) → f(params, x, ctx)`. LoRA on that
           block's MLP linears (if any) does not apply there: the base FF is not run.

    A block may have both (FF replaced, then the hook on its output). As a pytree its leaves are the
    modules' params only, so `jax.grad` w.r.t. a `BlockModules` returns a `BlockModules` of gradients.
    """

    hooks: dict[int, Module] = struct.field(default_factory=dict)
    ffn: dict[int, Module] = struct.field(default_factory=dict)

    @property
    def blocks(self) -> tuple[int, ...]:
        """The block indices with any module, ascending."""
        return tuple(sorted(set(self.hooks) | set(self.ffn)))

    def check(self, num_layers: int) -> None:
        """One clear error for a block index out of range (`ValueError`) or an entry not a `Module` (`TypeError`)."""
        for kind, table in (("hook", self.hooks), ("ffn", self.ffn)):
            for i, m in table.items():
                if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < num_layers:
                    raise ValueError(f"{kind} on block {i!r}: the model has blocks 0..{num_layers - 1}")
                if not isinstance(m, Module):
                    raise TypeError(f"{kind} on block {i}: expected a Module(apply, params), got {type(m).__name__}")


def module_output(kind: str, i: int, y, like):
    """A module's result checked against the array it adds to, cast to its dtype."""
    if getattr(y, "shape", None) != like.shape:
        raise ValueError(f"the {kind} module of block {i} returned shape {getattr(y, 'shape', type(y).__name__)}; "
                         f"it must return {like.shape} (B, T, D)")
    return y.astype(like.dtype)

