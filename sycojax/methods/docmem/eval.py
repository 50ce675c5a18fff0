"""Document memory's evaluation: recall of each document from its first words, with its key and controls.

`greedy` decodes with the module hooked (KV cache; the key passes through `module_ctx`); `recall` scores
the continuation against the document's true next tokens: ROUGE-L F of the text and the share of the first
`n` tokens that match exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sycojax.eval.rouge import rouge_l_each
from sycojax.methods.docmem.module import DocMemConfig, DocMemHook
from sycojax.models import BlockModules, ModelConfig, Module, forward, init_cache


@functools.partial(jax.jit, static_argnames=("cfg",))
def _step(params, modules, ctx, cache, tokens, positions, mask, index, *, cfg):
    out = forward(params, tokens, cfg=cfg, positions=positions, mask=mask, cache=cache, cache_index=index,
                  modules=modules, module_ctx=ctx)
    return jnp.argmax(out.logits[:, -1], -1), out.cache


def greedy(params, cfg: ModelConfig, prompts: Sequence[Sequence[int]], new_tokens: int, *, module_params=None,
           c: DocMemConfig | None = None, layer: int = -1, keys=None, pad: int = 0) -> np.ndarray:
    """`(B, new_tokens)` greedy tokens after each (left-padded) prompt; `module_params=None`: the base model."""
    b, p = len(prompts), max(len(x) for x in prompts)
    tokens = np.full((b, p), pad, np.int32)
    valid = np.zeros((b, p + new_tokens), bool)
    for i, x in enumerate(prompts):
        tokens[i, p - len(x) :], valid[i, p - len(x) : p] = x, True
    modules = None if module_params is None else BlockModules(hooks={layer: Module(DocMemHook(c), module_params)})
    ctx = {"doc_key": None if keys is None else jnp.asarray(keys)}
    positions = np.maximum(np.cumsum(valid[:, :p], 1) - 1, 0)
    slot = np.arange(p + new_tokens)
    mask = valid[:, None, None, :] & (slot[None, None, None, :] <= np.arange(p)[None, None, :, None])
    cache = init_cache(cfg, b, p + new_tokens)
    nxt, cache = _step(params, modules, ctx, cache, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask), 0,
                       cfg=cfg)
    out = [np.asarray(nxt)]
    for i in range(1, new_tokens):
        valid[:, p + i - 1] = True
        nxt, cache = _step(params, modules, ctx, cache, jnp.asarray(out[-1][:, None]),
                           jnp.asarray(positions[:, -1:] + i), jnp.asarray(valid[:, None, None, :]), p + i - 1, cfg=cfg)
        out.append(np.asarray(nxt))
    return np.stack(out, 1)


def recall(tok, generated: np.ndarray, truths: Sequence[Sequence[int]]) -> dict[str, float]:
    """Mean ROUGE-L F (text) and exact-token match rate of `generated` against the true continuations."""
    n = generated.shape[1]
    exact = [float(np.mean(np.asarray(g[: len(t)]) == np.asarray(t[:n]))) for g, t in zip(generated, truths)]
    rouge = rouge_l_each([tok.decode(g, skip_special_tokens=True) for g in generated],
                         [tok.decode(t[:n], skip_special_tokens=True) for t in truths])
    return {"rouge_l": float(np.mean(rouge)), "exact_token_match": float(np.mean(exact))}
