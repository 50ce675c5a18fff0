"""Document memory's evaluation: recall of each document from its first words, with its key and controls.

`greedy` decodes with the module hooked (KV cache; the key passes through `module_ctx`); `recall` scores
the continuation against the document's true next tokens: ROUGE-L F of the text and the share of the first
`n` tokens that match exactly. `evaluate` is a run's report (recall with its own key, a wrong key, the zero
key and the base model; CE with each key; the gate's L0/L2); `edit_test`, `interpolation` and
`gate_distances` are `launch/eval_docmem.py`'s further checks.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sycojax.eval.rouge import rouge_l_each
from sycojax.methods.docmem import loss as Lo
from sycojax.methods.docmem.module import DocMemConfig, DocMemHook, negative_keys, selection
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


def recall_each(tok, generated: np.ndarray, truths: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
    """Per document: ROUGE-L F (text) and exact-token match rate of `generated` against the true continuations."""
    n = generated.shape[1]
    exact = [float(np.mean(np.asarray(g[: len(t)]) == np.asarray(t[:n]))) for g, t in zip(generated, truths)]
    rouge = rouge_l_each([tok.decode(g, skip_special_tokens=True) for g in generated],
                         [tok.decode(t[:n], skip_special_tokens=True) for t in truths])
    return {"rouge_l": np.asarray(rouge, float), "exact_token_match": np.asarray(exact, float)}


def recall(tok, generated: np.ndarray, truths: Sequence[Sequence[int]]) -> dict[str, float]:
    """Mean ROUGE-L F (text) and exact-token match rate of `generated` against the true continuations."""
    return {k: float(v.mean()) for k, v in recall_each(tok, generated, truths).items()}


def recall_prompts(tok, docs, arrays: dict, prompt_words: int, new_tokens: int):
    """Each document's first window cut after its first `prompt_words` words: `(prompts, truths)` token lists."""
    prompts, truths = [], []
    for d, doc in enumerate(docs):
        first = int(np.flatnonzero(arrays["doc"] == d)[0])
        words = " ".join(doc.text.split()[:prompt_words])
        head = [tok.bos_token_id, *tok(words, add_special_tokens=False)["input_ids"]]
        row = arrays["tokens"][first][arrays["valid"][first]].tolist()
        k = len(head) if row[: len(head)] == head else min(len(head), len(row) - 1)
        prompts.append(row[:k])
        truths.append(row[k : k + new_tokens])
    return prompts, truths


def recall_with(params, cfg, tok, prompts, truths, new_tokens: int, *, module_params=None, c=None, layer=-1,
                keys=None, batch: int = 32) -> dict[str, np.ndarray]:
    """Per-document recall generating with `keys[i]` for prompt i (`module_params=None`: the base model)."""
    gen = np.concatenate([greedy(params, cfg, prompts[i : i + batch], new_tokens, module_params=module_params, c=c,
                                 layer=layer, keys=None if keys is None else keys[i : i + batch])
                          for i in range(0, len(prompts), batch)])
    return recall_each(tok, gen, truths)


def mean_ce(params, module_params, c, cfg, layer, arrays: dict, key_of, batch: int = 16) -> float:
    """Mean next-token CE over all windows, each with `key_of(doc ids)` ((B, key_dim))."""
    vals = []
    for i in range(0, len(arrays["doc"]), batch):
        sl = slice(i, i + batch)
        vals += list(np.asarray(Lo.window_nll(params, module_params, c, cfg, layer, jnp.asarray(arrays["h"][sl]),
                                              jnp.asarray(arrays["tokens"][sl]), jnp.asarray(arrays["valid"][sl]),
                                              jnp.asarray(arrays["weights"][sl]), key_of(arrays["doc"][sl]))))
    return float(np.mean(vals))


def wrong_keys(keys: np.ndarray) -> np.ndarray:
    """For each document another document's key (fixed seed): the wrong-key control."""
    return np.asarray(negative_keys(jax.random.key(7), jnp.asarray(keys), jnp.arange(len(keys)), "other"))


def gate_stats(module_params, c: DocMemConfig, keys: np.ndarray) -> dict[str, float]:
    """Mean L0 (units with |g| > 1e-3) and L2 of the documents' gates."""
    g = np.asarray(selection(module_params, jnp.asarray(keys), c))
    return {"l0": float((np.abs(g) > 1e-3).sum(1).mean()), "l2": float(np.linalg.norm(g, axis=1).mean()),
            "units": c.memory_units}


def evaluate(params, cfg, tok, trainable, c: DocMemConfig, layer: int, keys: np.ndarray, docs, arrays: dict, *,
             prompt_words: int = 8, new_tokens: int = 32, wrong: np.ndarray | None = None) -> dict:
    """A run's report: recall of each document's first window from its first `prompt_words` words with its own
    key, another's, the zero key (`no_key`: no document selected) and the base model; CE with each key."""
    prompts, truths = recall_prompts(tok, docs, arrays, prompt_words, new_tokens)
    wrong = wrong_keys(keys) if wrong is None else wrong
    zero = np.zeros_like(keys)
    runs = {"own_key": keys, "wrong_key": wrong, "no_key": zero, "base": None}
    per_doc = {name: recall_with(params, cfg, tok, prompts, truths, new_tokens, c=c, layer=layer, keys=k,
                                 module_params=None if k is None else trainable)
               for name, k in runs.items()}
    ce = {name: mean_ce(params, trainable, c, cfg, layer, arrays, lambda d, k=k: jnp.asarray(k[d]))
          for name, k in (("own", keys), ("other", wrong), ("zero", zero))}
    ce["base"] = mean_ce(params, trainable, c, cfg, layer, arrays, lambda d: None)
    return {"recall": {n: {k: float(v.mean()) for k, v in r.items()} for n, r in per_doc.items()},
            "recall_per_document": {n: r["rouge_l"].tolist() for n, r in per_doc.items()},
            "ce": ce, "gate_stats": gate_stats(trainable, c, keys), "prompt_words": prompt_words,
            "new_tokens": new_tokens}


def edit_test(params, cfg, tok, trainable, c: DocMemConfig, layer: int, keys: np.ndarray, prompts, truths,
              new_tokens: int, removed: Sequence[int], before: np.ndarray, nokey: np.ndarray) -> dict:
    """Forget documents by zeroing their keys in the key table, then regenerate EVERY document with the edited
    table: the removed ones should fall to the no-key recall, the others stay where they were (`before`)."""
    edited = keys.copy()
    edited[list(removed)] = 0.0
    after = recall_with(params, cfg, tok, prompts, truths, new_tokens, module_params=trainable, c=c, layer=layer,
                        keys=edited)["rouge_l"]
    others = np.setdiff1d(np.arange(len(keys)), removed)
    return {"removed": [int(i) for i in removed], "removed_recall": float(after[list(removed)].mean()),
            "removed_recall_before": float(before[list(removed)].mean()),
            "nokey_recall": float(nokey[list(removed)].mean()),
            "others_max_drop": float(np.max(before[others] - after[others])),
            "others_mean_before": float(before[others].mean()), "others_mean_after": float(after[others].mean())}


def interpolation(params, trainable, c: DocMemConfig, cfg, layer: int, keys: np.ndarray, arrays: dict, a: int, b: int,
                  steps: int = 11) -> dict:
    """Perplexity of documents a's and b's windows along the key path `(1 - t) k_a + t k_b`."""
    ts = np.linspace(0.0, 1.0, steps)
    out = {"t": ts.round(3).tolist(), "documents": [a, b]}
    for name, d in (("ppl_a", a), ("ppl_b", b)):
        rows = {k: v[arrays["doc"] == d] for k, v in arrays.items()}
        out[name] = [float(np.exp(mean_ce(params, trainable, c, cfg, layer, rows,
                                          lambda ids, t=t: jnp.asarray(np.broadcast_to((1 - t) * keys[a] + t * keys[b],
                                                                                       (len(ids), keys.shape[1]))))))
                     for t in ts]
    return out


def gate_distances(trainable, c: DocMemConfig, keys: np.ndarray) -> np.ndarray:
    """`(N, N)` Euclidean distances between the documents' gates."""
    g = np.asarray(selection(trainable, jnp.asarray(keys), c))
    sq = (g**2).sum(1)
    return np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * g @ g.T, 0.0))
