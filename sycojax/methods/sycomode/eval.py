"""Evaluation of a consolidated student: the exact held-out KL(teacher‖student) per response token
(`mean_kl`) and greedy side-by-side replies (teacher with the context, student and baseline without).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sycojax.infer.generate import generate
from sycojax.methods.sycomode.data import Targets, build_prompts
from sycojax.methods.sycomode.loss import packing_plan, response_hidden
from sycojax.methods.sycomode.spec import Spec
from sycojax.methods.sycomode.trees import student_params
from sycojax.models import Adapters, ModelConfig, lm_head_weight


@functools.partial(jax.jit, static_argnames=("cfg", "packing"))
def _student_kl(params, adapters, tokens, resp_pos, resp_w, lengths, teacher_lp, *, cfg, packing):
    h = response_hidden(params, adapters, cfg, tokens, resp_pos, lengths, packing)
    logits = jnp.einsum("brd,vd->brv", h, lm_head_weight(params, cfg)).astype(jnp.float32)
    s_lp = jax.nn.log_softmax(logits, axis=-1)
    kl = jnp.sum(jnp.exp(teacher_lp) * (teacher_lp - s_lp), axis=-1)
    return jnp.sum(kl * resp_w), jnp.sum(resp_w)


def mean_kl(params, adapters: Adapters, cfg: ModelConfig, targets: Targets, batch_size: int = 4,
            pack: bool = True) -> float:
    """Mean per-token KL(teacher ‖ student) over every response token of the eval set (nats).

    Rows run `batch_size` at a time (the last batch filled with copies of its last row, weight 0); with
    `pack`, each batch as one packed row when that saves >= 10% of its slots (`packing_plan`: the same
    values up to float summation order)."""
    n = targets.tokens.shape[0]
    batches = []
    for i in range(0, n, batch_size):
        rows = np.arange(i, min(i + batch_size, n))
        batches.append((len(rows), np.concatenate([rows, np.repeat(rows[-1:], batch_size - len(rows))])))
    lengths = targets.lengths()
    packing = None
    if pack:  # planned over the rows as batched (copies included), so every batch fits
        order = np.concatenate([r for _, r in batches])
        padded = dataclasses.replace(targets, tokens=targets.tokens[order], resp_pos=targets.resp_pos[order],
                                     resp_weights=targets.resp_weights[order], teacher_logprobs=None)
        packing = packing_plan(padded, batch_size)
    tot, cnt = 0.0, 0.0
    for real, pad_rows in batches:
        w = targets.resp_weights[pad_rows].copy()
        w[real:] = 0.0
        s, c = _student_kl(params, adapters, jnp.asarray(targets.tokens[pad_rows]),
                           jnp.asarray(targets.resp_pos[pad_rows]), jnp.asarray(w), jnp.asarray(lengths[pad_rows]),
                           jnp.asarray(targets.teacher_logprobs[pad_rows]), cfg=cfg, packing=packing)
        tot += float(s)
        cnt += float(c)
    return tot / max(cnt, 1.0)


def side_by_side(
    params, trainable, cfg: ModelConfig, spec: Spec, tok, context: str, queries: Sequence[str], *,
    max_new_tokens: int = 64,
) -> list[dict[str, str]]:
    """Greedy replies per query: teacher (context), student (consolidated, no context), baseline (no context)."""
    if not queries:
        return []
    prompts = build_prompts(tok, cfg, context, queries, spec.n_mem)
    plain = build_prompts(tok, cfg, context, queries, 0)
    teacher = generate(params, cfg, prompts.teacher_suffix, max_new_tokens=max_new_tokens,
                       prefix=prompts.teacher_prefix)
    sp, sa = student_params(params, trainable, cfg, spec)
    student = generate(sp, cfg, prompts.student, max_new_tokens=max_new_tokens, adapters=sa)
    base = generate(params, cfg, plain.student, max_new_tokens=max_new_tokens)
    dec = functools.partial(tok.decode, skip_special_tokens=True)
    return [
        {"query": q, "teacher": dec(t), "student": dec(s), "baseline": dec(b)}
        for q, t, s, b in zip(queries, teacher.rows(), student.rows(), base.rows())
    ]
