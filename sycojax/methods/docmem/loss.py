"""Document memory's training step on cached activations: only the module, the blocks above it and the LM head run.

The base is frozen, so the stream LEAVING the hooked block (`cache_after`) is computed once per window;
every step adds the module's increment to it and runs the blocks above (none when the hooked block is the
last, as upstream) and the LM head, twice: with the document's own key (`ce_pos`, every position) and a
negative key (`ce_neg`). On the last block everything after the cache is per position, so `ce_neg` can be
estimated on `neg_positions` sampled target positions per row (0 = all), running the LM head only there;
`guidance_loss` combines the two. `tail_logits` with the module on block `layer` equals
`forward(modules=BlockModules(hooks={layer: DocMemHook}))` (tested).

On the last block no position reads another, so `chunk_positions` re-cuts the windows' (stream, next token)
pairs into fixed `chunk`-token rows of one document each: a step then pays the LM head for real tokens, not
for the padding of ~115-token windows to 192 (`make_loss_fn(chunked=True)`; the CEs become token means).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sycojax.masks import causal_padding, positions_from_valid
from sycojax.methods.docmem.module import DocMemConfig, docmem_apply, negative_keys
from sycojax.methods.shared import cache_hidden_rows
from sycojax.models import ModelConfig, forward, lm_logits
from sycojax.objectives import guidance_loss, row_nll, token_nll


def cache_after(params, tokens, valid, *, cfg: ModelConfig, layer: int):
    """`(N, T, D)` host array: the frozen stream leaving block `layer` (its output, before the module)."""
    return cache_hidden_rows(params, tokens, valid, cfg=cfg, layer=layer + 1)


def tail_logits(params, module_params, c: DocMemConfig, cfg: ModelConfig, layer: int, h, valid, key, at=None):
    """Logits after the module on block `layer`, from that block's cached output `h` `(B, T, D)`; `at`
    `(B, P)` position indices (last block only): the logits there alone, `(B, P, V)`."""
    h = docmem_apply(module_params, h, key, c)
    if layer == cfg.num_layers - 1:
        if at is not None:
            h = jnp.take_along_axis(h, at[:, :, None], axis=1)
        return lm_logits(params, h, cfg)
    if at is not None:
        raise ValueError("sampled negative positions need the hook on the last block (the blocks above mix positions)")
    return forward(params, None, cfg=cfg, embeddings=h, start_layer=layer + 1, positions=positions_from_valid(valid),
                   mask=causal_padding(valid)).logits


def window_nll(params, module_params, c: DocMemConfig, cfg: ModelConfig, layer: int, h, tokens, valid, weights, key):
    """Per-row mean next-token NLL of the windows with `key` ((B, key_dim), or None: the base model)."""
    logits = tail_logits(params, module_params, c, cfg, layer, h, valid, key)
    return row_nll(logits[:, :-1], tokens[:, 1:], weights[:, 1:])


def sample_positions(rng, weights, n: int):
    """`(B, min(n, T))` position indices per row, drawn uniformly without replacement from those with weight
    (a row with fewer fills up with weight-0 positions)."""
    scores = jnp.where(weights > 0, jax.random.uniform(rng, weights.shape), -1.0)
    return jax.lax.top_k(scores, min(n, weights.shape[1]))[1]


def sampled_nll(params, module_params, c, cfg, layer, h, tokens, weights, key, rng, n: int):
    """Mean next-token NLL over `n` target positions per row drawn uniformly from those with weight."""
    target_w = weights[:, 1:]
    at = sample_positions(rng, target_w, n)
    w = jnp.take_along_axis(target_w, at, axis=1)
    logits = tail_logits(params, module_params, c, cfg, layer, h, None, key, at=at)
    labels = jnp.take_along_axis(tokens[:, 1:], at, axis=1)
    return row_nll(logits, labels, w)


def chunk_positions(h: np.ndarray, tokens: np.ndarray, weights: np.ndarray, doc: np.ndarray, chunk: int) -> dict:
    """Windows `(N, T, D)` → rows of `chunk` (stream, target) pairs, each row one document's consecutive
    positions: `{"h": (M, chunk, D), "labels", "weights": (M, chunk), "doc": (M,)}` (last block only)."""
    hs, labels, ws, docs = [], [], [], []
    for i in range(len(tokens)):
        n = int(np.flatnonzero(weights[i, 1:] > 0).max()) + 1 if (weights[i, 1:] > 0).any() else 0
        for s in range(0, n, chunk):
            e = min(s + chunk, n)
            hh = np.zeros((chunk, h.shape[2]), h.dtype)
            lab, ww = np.zeros(chunk, np.int32), np.zeros(chunk, np.float32)
            hh[: e - s], lab[: e - s], ww[: e - s] = h[i, s:e], tokens[i, s + 1 : e + 1], weights[i, s + 1 : e + 1]
            hs.append(hh), labels.append(lab), ws.append(ww), docs.append(int(doc[i]))
    return {"h": np.stack(hs), "labels": np.stack(labels), "weights": np.stack(ws), "doc": np.asarray(docs, np.int32)}


def chunk_nll(params, module_params, c: DocMemConfig, cfg: ModelConfig, h, labels, weights, key):
    """Token-mean NLL of chunked rows (`chunk_positions`) with `key` per row."""
    logits = lm_logits(params, docmem_apply(module_params, h, key, c), cfg)
    w = weights.astype(jnp.float32)
    return (token_nll(logits, labels) * w).sum() / jnp.maximum(w.sum(), 1.0)


def make_loss_fn(cfg: ModelConfig, c: DocMemConfig, layer: int, *, negative: str, tau: float, alpha: float, form: str,
                 neg_positions: int = 0, chunked: bool = False):
    sample = neg_positions > 0 and layer == cfg.num_layers - 1
    if chunked and layer != cfg.num_layers - 1:
        raise ValueError("chunked rows need the hook on the last block (the blocks above mix positions)")

    def chunked_loss(trainable, frozen, batch, rng):
        keys, base = frozen["keys"], frozen["base"]
        key_rng, pos_rng = jax.random.split(rng)
        h, labels, w = batch["h"], batch["labels"], batch["weights"]
        ce_pos = chunk_nll(base, trainable, c, cfg, h, labels, w, keys[batch["doc"]])
        neg = negative_keys(key_rng, keys, batch["doc"], negative)
        if sample:
            at = sample_positions(pos_rng, w, neg_positions)
            pick = lambda x: jnp.take_along_axis(x, at if x.ndim == 2 else at[:, :, None], axis=1)  # noqa: E731
            ce_neg = chunk_nll(base, trainable, c, cfg, pick(h), pick(labels), pick(w), neg)
        else:
            ce_neg = chunk_nll(base, trainable, c, cfg, h, labels, w, neg)
        loss = guidance_loss(ce_pos, ce_neg, tau=tau, alpha=alpha, form=form)
        return loss, {"ce_pos": ce_pos, "ce_neg": ce_neg}

    if chunked:
        return chunked_loss

    def loss_fn(trainable, frozen, batch, rng):
        keys = frozen["keys"]
        key_rng, pos_rng = jax.random.split(rng)
        base, h, tokens, w = frozen["base"], batch["h"], batch["tokens"], batch["weights"]
        ce_pos = window_nll(base, trainable, c, cfg, layer, h, tokens, batch["valid"], w, keys[batch["doc"]]).mean()
        neg = negative_keys(key_rng, keys, batch["doc"], negative)
        if sample:
            ce_neg = sampled_nll(base, trainable, c, cfg, layer, h, tokens, w, neg, pos_rng, neg_positions).mean()
        else:
            ce_neg = window_nll(base, trainable, c, cfg, layer, h, tokens, batch["valid"], w, neg).mean()
        loss = guidance_loss(ce_pos, ce_neg, tau=tau, alpha=alpha, form=form)
        return loss, {"ce_pos": ce_pos, "ce_neg": ce_neg}

    return loss_fn
