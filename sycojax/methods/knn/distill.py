"""Distilling the original model into one whose chosen blocks' feed-forward is a kNN memory layer.

The blocks below the first replaced block are the original's, so the stream entering it is computed once
per row (`cache_hidden`); every step then runs `forward(embeddings=h, start_layer=b0)` twice: the frozen
original (teacher, no gradient) and the student with `BlockModules(ffn={b: KNNFFN})`. Loss (upstream.md §5):
`T² · KL(teacher_T ‖ student_T)` at T = 2 plus `ce_weight ·` CE on the shifted next token.

Stores are host objects (`store.KNNStore`): the step reads their capacity-shaped arrays from the frozen
tree; after each step `Writer.between_steps` runs `candidates` on the same batch with the updated layers
(the keys and values each replaced block would write, and its queries), records the step's hits (the
same exact top-k, on the host), inserts what is novel
(the store recombines and evicts), and hands the refreshed arrays back to the loop; `Writer.on_save`
commits every store with the checkpoint of that step.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sycojax.masks import causal_padding, positions_from_valid
from sycojax.methods.knn.layers import KNNFFN, KNNConfig, projections, store_key
from sycojax.methods.shared import cache_hidden  # noqa: F401 - part of this module's API
from sycojax.models import BlockModules, ModelConfig, Module, forward
from sycojax.models.model import base_ffn, block_mlp
from sycojax.objectives import token_kl, token_nll, weighted_mean


def student_modules(trainable: dict, layers: dict[int, KNNConfig]) -> BlockModules:
    return BlockModules(ffn={b: Module(KNNFFN(c, b), trainable.get(str(b), {})) for b, c in layers.items()})


def logits_from(base, h, valid, *, cfg: ModelConfig, start: int, modules=None, stores=None, ffn_inputs=False):
    return forward(base, None, cfg=cfg, embeddings=h, start_layer=start, positions=positions_from_valid(valid),
                   mask=causal_padding(valid), modules=modules, module_ctx=stores, return_ffn_inputs=ffn_inputs,
                   return_logits=not ffn_inputs)


def make_loss_fn(cfg: ModelConfig, layers: dict[int, KNNConfig], *, temperature: float, ce_weight: float):
    start = min(layers)

    def loss_fn(trainable, frozen, batch, rng):
        del rng
        base, h, valid, tokens = frozen["base"], batch["h"], batch["valid"], batch["tokens"]
        teacher = jax.lax.stop_gradient(logits_from(base, h, valid, cfg=cfg, start=start).logits)
        student = logits_from(base, h, valid, cfg=cfg, start=start, modules=student_modules(trainable, layers),
                              stores=frozen["stores"]).logits
        w = valid.astype(jnp.float32)
        kl_t = weighted_mean(token_kl(teacher, student, temperature), w)
        ce = weighted_mean(token_nll(student[:, :-1], tokens[:, 1:]), w[:, 1:])
        return temperature**2 * kl_t + ce_weight * ce, {"kl_T": kl_t, "ce": ce}

    return loss_fn


@functools.partial(jax.jit, static_argnames=("cfg", "layers"))
def candidates(trainable, base, stores, h, valid, *, cfg: ModelConfig, layers: tuple):
    """Per store-backed block: the `(key, value)` each token would write and its query `q`.

    `layers` is `tuple((block, KNNConfig))`. Featural writes `(q, FF_original(x))`, associative `(k, v)`.
    """
    table = dict(layers)
    out = logits_from(base, h, valid, cfg=cfg, start=min(table), modules=student_modules(trainable, table),
                      stores=stores, ffn_inputs=True)
    result = {}
    for b, c in table.items():
        if not c.uses_store:
            continue
        x = out.ffn_inputs[b]
        pr = projections(trainable[str(b)], x, c)
        if c.kind == "featural":
            key, value = pr["q"], base_ffn(block_mlp(base, cfg, b), x.astype(jnp.float32), cfg)
        else:
            key, value = pr["k"], pr["v"]
        result[b] = (key, value.astype(jnp.float32), pr["q"])
    return result


@functools.partial(jax.jit, static_argnames=("cfg", "layers", "start"))
def eval_rows(trainable, base, stores, h, valid, tokens, *, cfg: ModelConfig, layers: tuple, start: int):
    """Per row: summed KL (T = 1) to the original, summed next-token NLL and the tokens scored, from the
    stream `h` entering block `start`. `layers=()` scores the original itself (KL 0)."""
    table = dict(layers)
    teacher = logits_from(base, h, valid, cfg=cfg, start=start).logits
    student = teacher if not table else logits_from(
        base, h, valid, cfg=cfg, start=start, modules=student_modules(trainable, table), stores=stores).logits
    w = valid.astype(jnp.float32)
    kl = (token_kl(teacher, student) * w).sum(-1)
    nll = (token_nll(student[:, :-1], tokens[:, 1:]) * w[:, 1:]).sum(-1)
    return kl, nll, w[:, 1:].sum(-1)


class Writer:
    """Keeps the host stores and the device arrays the step reads in step (see the module docstring)."""

    def __init__(self, cfg: ModelConfig, base, layers: dict[int, KNNConfig], stores: dict):
        self.cfg, self.base, self.layers, self.stores = cfg, base, layers, stores  # stores: {block: KNNStore}
        self._device = None  # the stores' arrays on device, copied once after each change

    def device_stores(self) -> dict:
        """`{store_key(b): (keys, values, valid)}` on device; copies (`jnp.asarray`), so the host store can change
        its arrays in place without touching what a step reads."""
        if self._device is None:
            self._device = {store_key(b): tuple(jnp.asarray(a) for a in s.arrays()) for b, s in self.stores.items()}
        return self._device

    def frozen(self) -> dict:
        return {"base": self.base, "stores": self.device_stores()}

    def write(self, trainable, batch, step: int) -> dict:
        """Touch the hits and insert the candidates of `batch`; returns the inserted/recombined/evicted counts."""
        if not self.stores:
            return {}
        cand = candidates(trainable, self.base, self.device_stores(), jnp.asarray(batch["h"]),
                          jnp.asarray(batch["valid"]), cfg=self.cfg, layers=tuple(sorted(self.layers.items())))
        ok = np.asarray(batch["valid"]).reshape(-1)
        counts = {}
        for b, (key, value, q) in cand.items():
            store = self.stores[b]  # the step's hits, found again on the host (the step returns only its loss)
            store.touch(store.query(np.asarray(q).reshape(-1, q.shape[-1])[ok])[0], step)
            counts[b] = store.insert(np.asarray(key).reshape(-1, key.shape[-1])[ok],
                                     np.asarray(value).reshape(-1, value.shape[-1])[ok], step)
        self._device = None
        return counts

    def between_steps(self, step: int, trainable, host_batch) -> dict | None:
        if not self.stores:
            return None
        self.write(jax.device_get(trainable), host_batch, step)
        return self.frozen()

    def on_save(self, step: int) -> None:
        for s in self.stores.values():
            s.commit(step)

