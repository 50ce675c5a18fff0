"""The experiments' metrics on one row's logits: P(letter) restricted to the 26 letter tokens (experiment 1)
and the answer's perplexity (experiments 2 and 3).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sycojax.eval import perplexity, restricted_softmax_prob
from sycojax.masks import causal_padding
from sycojax.methods import sycomode as sm
from sycojax.methods.sycomode_experiments.data import ALPHABET, encode
from sycojax.models import Adapters, ModelConfig, forward


@functools.partial(jax.jit, static_argnames=("cfg",))
def _logits(params, adapters, tokens, *, cfg):
    b, t = tokens.shape
    out = forward(
        params,
        tokens,
        cfg=cfg,
        positions=jnp.arange(t)[None].repeat(b, 0),
        mask=causal_padding(jnp.ones((b, t), bool)),
        adapters=adapters,
    )
    return out.logits


def row_logits(params, adapters: Adapters | None, cfg: ModelConfig, ids: Sequence[int], bucket: int = 32) -> jax.Array:
    """`(len(ids), V)` logits of one row (right-padded to a multiple of `bucket`: causal, so padding is inert)."""
    n = len(ids)
    t = -(-n // bucket) * bucket
    tokens = np.full((1, t), cfg.pad_token_id or 0, np.int32)
    tokens[0, :n] = ids
    return _logits(params, adapters or Adapters(), jnp.asarray(tokens), cfg=cfg)[0, :n]


def letter_ids(tok) -> list[int]:
    """Token ids of " a" .. " z" (the letter that follows "c d e f"); each must be a single token."""
    ids = [encode(tok, " " + c) for c in ALPHABET]
    bad = [c for c, i in zip(ALPHABET, ids) if len(i) != 1]
    if bad:
        raise sm.ConsolidationError(
            f"the tokenizer splits the letters {bad} (with a leading space) into several tokens"
        )
    return [i[0] for i in ids]


def letter_prob(last_logits: jax.Array, letters: Sequence[int], answer: str) -> float:
    """P(answer letter) under the softmax restricted to the 26 letter tokens (upstream `judge_on_alphabet`)."""
    return float(
        restricted_softmax_prob(last_logits, jnp.asarray(letters), jnp.asarray(letters[ALPHABET.index(answer)]))
    )


def answer_perplexity(logits: jax.Array, prompt_len: int, answer_ids: Sequence[int]) -> float:
    """exp(−(1/n) Σ_j log p(answer_j | prompt, answer_<j)) from the logits of `prompt + answer`
    (upstream `calculate_perplexity`): the answer's token j is predicted at position prompt_len − 1 + j.
    """
    n = len(answer_ids)
    if n == 0:
        raise ValueError("answer_perplexity needs a non-empty answer")
    pred = logits[prompt_len - 1 : prompt_len - 1 + n][None]
    return float(perplexity(pred, jnp.asarray([list(answer_ids)]), jnp.ones((1, n)), per_sequence=True)[0])
