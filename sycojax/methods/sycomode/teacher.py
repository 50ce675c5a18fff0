"""The teacher, run once: its replies to every query and its top-k (or full) log-probs at every
response token, aligned to the student's positions (`Targets`). The context's K/V is computed once per
pass (`generate(prefix=...)`, `_prefix_cache`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from sycojax import objectives as obj
from sycojax.infer.generate import GREEDY, Sampling, generate
from sycojax.methods.sycomode.data import Prompts, Targets, bucket_length, response_rows
from sycojax.methods.sycomode.spec import ConsolidationError
from sycojax.models import ModelConfig, check_length, forward, init_cache, lm_head_weight


def teacher_responses(
    params, cfg, prompts: Prompts, *, max_new_tokens: int, sampling: Sampling = GREEDY, seed: int = 0,
    batch_size: int = 8, desc: str = "teacher responses",
) -> list[list[int]]:
    """The teacher's reply to each query (EOS appended when it stopped), batched, context K/V shared."""
    out: list[list[int]] = []
    rows = prompts.teacher_suffix
    for i in tqdm(range(0, len(rows), batch_size), desc=desc, leave=False):
        chunk = rows[i : i + batch_size]
        chunk = chunk + [chunk[-1]] * (batch_size - len(chunk))  # one compiled shape
        g = generate(
            params, cfg, chunk, max_new_tokens=max_new_tokens, sampling=sampling, seed=seed + i,
            prefix=prompts.teacher_prefix,
        )
        for j in range(min(batch_size, len(rows) - i)):
            r = g.rows()[j]
            out.append(r + [cfg.eos_ids[0]] if g.lengths[j] < max_new_tokens and cfg.eos_ids else r)
    return out


@functools.partial(jax.jit, static_argnames=("cfg", "topk", "temperature", "full"))
def _teacher_logprobs(params, prefix_cache, suffix, valid, gather_pos, *, cfg, topk, temperature, full):
    b, t = suffix.shape
    q = prefix_cache["k"].shape[2]
    s = q + t
    cache = jax.tree.map(
        lambda c: jnp.concatenate([jnp.broadcast_to(c, (c.shape[0], b) + c.shape[2:]),
                                   jnp.zeros((c.shape[0], b, t) + c.shape[3:], c.dtype)], axis=2),
        prefix_cache,
    )
    key_valid = jnp.concatenate([jnp.ones((b, q), bool), valid], axis=1)
    mask = (jnp.arange(s)[None, :] <= (q + jnp.arange(t))[:, None])[None, None] & key_valid[:, None, None, :]
    out = forward(params, suffix, cfg=cfg, positions=q + jnp.arange(t)[None].repeat(b, 0), mask=mask,
                  cache=cache, cache_index=q, return_logits=False)
    # the LM head at the response positions only (as the student's loss): (B, R, D) -> (B, R, V)
    h = jnp.take_along_axis(out.final_hidden, gather_pos[..., None], axis=1)
    logits = jnp.einsum("brd,vd->brv", h, lm_head_weight(params, cfg)).astype(jnp.float32)
    if full:
        return jax.nn.log_softmax(logits / temperature, axis=-1)
    return obj.teacher_topk(logits, topk, temperature)


def _prefix_cache(params, cfg, prefix: Sequence[int]):
    """The context prefix's K/V (batch 1), computed once per teacher pass."""
    return _prefix_cache_jit(params, jnp.asarray([prefix], jnp.int32), cfg=cfg)


@functools.partial(jax.jit, static_argnames="cfg")
def _prefix_cache_jit(params, tokens, *, cfg):
    # jitted: run eagerly, this 48-token forward took ~0.9 s of op-by-op dispatch (0.1 s compiled)
    q = tokens.shape[1]
    mask = (jnp.arange(q)[None, :] <= jnp.arange(q)[:, None])[None, None]
    out = forward(params, tokens, cfg=cfg, positions=jnp.arange(q)[None], mask=mask, cache=init_cache(cfg, 1, q),
                  return_logits=False)
    return out.cache


def teacher_targets(
    params, cfg: ModelConfig, prompts: Prompts, responses: Sequence[Sequence[int]], *, topk: int,
    temperature: float = 1.0, full: bool = False, batch_size: int = 8, desc: str = "teacher targets",
) -> Targets:
    """Run the teacher once over every (query, response) and align its targets to the student's positions.

    Student row i = `student[i] + response[i]`; the logits at student position `len(student[i]) - 1 + j`
    predict response token j, and so do the teacher's at `len(prefix) + len(suffix[i]) - 1 + j`.
    """
    n = len(responses)
    if n == 0:
        raise ConsolidationError("no teacher responses to train on")
    t_teacher = bucket_length(max(len(s) + len(r) for s, r in zip(prompts.teacher_suffix, responses)))
    check_length(cfg, len(prompts.teacher_prefix) + t_teacher, "context + query + response")
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    tokens, resp_pos, resp_w = response_rows(prompts.student, responses, pad)
    r_max = resp_pos.shape[1]
    prefix_cache = _prefix_cache(params, cfg, prompts.teacher_prefix)
    k = cfg.vocab_size if full else topk
    idx_all, lp_all = [], []
    for i in tqdm(range(0, n, batch_size), desc=desc, leave=False):
        rows = list(range(i, min(i + batch_size, n)))
        rows_p = rows + [rows[-1]] * (batch_size - len(rows))
        suffix = np.full((batch_size, t_teacher), pad, np.int32)
        valid = np.zeros((batch_size, t_teacher), bool)
        gather = np.zeros((batch_size, r_max), np.int32)
        for j, ri in enumerate(rows_p):
            row = list(prompts.teacher_suffix[ri]) + list(responses[ri])
            suffix[j, : len(row)] = row
            valid[j, : len(row)] = True
            ls = len(prompts.teacher_suffix[ri])
            gather[j] = np.clip(np.arange(ls - 1, ls - 1 + r_max), 0, t_teacher - 1)
        res = _teacher_logprobs(params, prefix_cache, jnp.asarray(suffix), jnp.asarray(valid), jnp.asarray(gather),
                                cfg=cfg, topk=k, temperature=temperature, full=full)
        if full:
            lp_all.append(np.asarray(res)[: len(rows)])
        else:
            idx_all.append(np.asarray(res[0])[: len(rows)])
            lp_all.append(np.asarray(res[1])[: len(rows)])
    if full:
        return Targets(tokens, resp_pos, resp_w, teacher_logprobs=np.concatenate(lp_all).astype(np.float32))
    return Targets(tokens, resp_pos, resp_w, np.concatenate(idx_all), np.concatenate(lp_all))
