"""The teacher, once per instruction: sampled responses to each training query and its top-k log-probs
at every response token, aligned to the student rows (`TeacherData`, shared by every rank); generation in
fixed-size batches.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sycojax import objectives as obj
from sycojax.infer.generate import GREEDY, Sampling, generate
from sycojax.masks import causal_padding
from sycojax.methods import sycomode as sm
from sycojax.methods.gist_lora.data import Instruction, prompt_ids
from sycojax.methods.gist_lora.spec import BUCKET, GistLoraError, LoraEvalSpec
from sycojax.models import Adapters, ModelConfig, forward, lm_head_weight


def _batched_generate(params, cfg, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, batch_size: int,
                      sampling: Sampling = GREEDY, seed: int = 0, adapters: Adapters | None = None) -> list[list[int]]:
    """`generate` in fixed-size batches (the last padded by repetition) with 64-token prompt buckets."""
    out: list[list[int]] = []
    for i in range(0, len(prompts), batch_size):
        chunk = [list(p) for p in prompts[i : i + batch_size]]
        n = len(chunk)
        chunk += [chunk[-1]] * (batch_size - n)
        g = generate(params, cfg, chunk, max_new_tokens=max_new_tokens, sampling=sampling, seed=seed + i,
                     adapters=adapters, bucket=BUCKET)
        out += g.rows()[:n]
    return out


def _bucket(n: int) -> int:
    return -(-n // BUCKET) * BUCKET


@functools.partial(jax.jit, static_argnames=("cfg", "topk", "temperature"))
def _teacher_topk(params, tokens, gather_pos, *, cfg, topk, temperature):
    """Top-k log-probs of right-padded rows at `gather_pos` (B, R): logits only where they are needed."""
    b, t = tokens.shape
    out = forward(params, tokens, cfg=cfg, positions=jnp.broadcast_to(jnp.arange(t)[None], (b, t)),
                  mask=causal_padding(jnp.ones((b, t), bool)), return_logits=False)
    h = jnp.take_along_axis(out.final_hidden, gather_pos[..., None], axis=1)  # (B, R, D)
    logits = jnp.einsum("brd,vd->brv", h, lm_head_weight(params, cfg), preferred_element_type=jnp.float32)
    return obj.teacher_topk(logits, topk, temperature)


@dataclasses.dataclass
class TeacherData:
    """Everything the ranks of one instruction share: queries, teacher responses, top-k targets."""

    queries: list[str]
    query_sources: dict[str, int]
    responses: list[str]  # decoded teacher responses (len = queries × samples_per_query)
    targets: sm.Targets  # student rows + teacher top-k; rows padded with zero weight to a multiple of batch
    num_rows: int  # real rows
    seconds: float


def build_teacher(params, cfg: ModelConfig, tok, instruction: Instruction, queries: Sequence[str],
                  query_sources: Mapping[str, int], spec: LoraEvalSpec, *, chat: Any, gist_id: int,
                  seed: int = 0, t_start: float | None = None) -> TeacherData:
    """Teacher responses (sampled) to each query and its top-k targets aligned to the student rows, once."""
    t0 = time.perf_counter() if t_start is None else t_start
    if not queries:
        raise GistLoraError(f"no training queries for instruction {instruction.text[:80]!r}")
    ids = [prompt_ids({"instruction": instruction.text, "input": q, "output": None}, tok, fmt=spec.fmt, chat=chat,
                      gist_id=gist_id, max_length=None) for q in queries]
    ids = ids * spec.samples_per_query
    r_len = spec.max_response_tokens
    rows = _batched_generate(params, cfg, [p.teacher for p in ids], max_new_tokens=r_len, batch_size=spec.gen_batch,
                             sampling=Sampling(spec.teacher_temperature, spec.teacher_top_p), seed=seed)
    eos = cfg.eos_ids[0] if cfg.eos_ids else None
    responses = [r + [eos] if eos is not None and len(r) < r_len else r for r in rows]
    responses = [r if r else [eos if eos is not None else 0] for r in responses]
    n = len(responses)
    bs = spec.batch_size
    n_pad = -(-n // bs) * bs
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    t_student = _bucket(max(len(p.student) + len(r) for p, r in zip(ids, responses)))
    t_teacher = _bucket(max(len(p.teacher) + len(r) for p, r in zip(ids, responses)))
    longest = max(len(p.teacher) + len(r) for p, r in zip(ids, responses))
    if longest > cfg.max_position_embeddings:
        raise GistLoraError(f"a teacher row of {longest} tokens exceeds the model's window "
                            f"{cfg.max_position_embeddings}; lower max_length or max_response_tokens")
    t_teacher = min(t_teacher, cfg.max_position_embeddings)
    t_student = min(t_student, cfg.max_position_embeddings)
    tokens = np.full((n_pad, t_student), pad, np.int32)
    resp_pos = np.zeros((n_pad, r_len), np.int32)
    resp_w = np.zeros((n_pad, r_len), np.float32)
    t_rows = np.full((n_pad, t_teacher), pad, np.int32)
    gather = np.zeros((n_pad, r_len), np.int32)
    for i in range(n_pad):
        j = i % n  # padding rows repeat real ones with zero weight
        p, r = ids[j], responses[j]
        tokens[i, : len(p.student) + len(r)] = list(p.student) + list(r)
        t_rows[i, : len(p.teacher) + len(r)] = list(p.teacher) + list(r)
        resp_pos[i, : len(r)] = np.arange(len(p.student) - 1, len(p.student) - 1 + len(r))
        gather[i] = np.clip(np.arange(len(p.teacher) - 1, len(p.teacher) - 1 + r_len), 0, t_teacher - 1)
        if i < n:
            resp_w[i, : len(r)] = 1.0
    idx_all, lp_all = [], []
    for i in range(0, n_pad, bs):
        idx, lp = _teacher_topk(params, jnp.asarray(t_rows[i : i + bs]), jnp.asarray(gather[i : i + bs]), cfg=cfg,
                                topk=min(spec.topk, cfg.vocab_size), temperature=float(spec.temperature))
        idx_all.append(np.asarray(idx))
        lp_all.append(np.asarray(lp))
    targets = sm.Targets(tokens, resp_pos, resp_w, np.concatenate(idx_all), np.concatenate(lp_all))
    texts = [tok.decode(r, skip_special_tokens=True).strip() for r in rows]
    return TeacherData(list(queries), dict(query_sources), texts, targets, n, time.perf_counter() - t0)
