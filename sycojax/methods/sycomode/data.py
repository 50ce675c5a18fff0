"""Inputs of a consolidation run: teacher / student prompts for a list of queries, and the student rows
(`Targets`) the teacher's targets are aligned to (`teacher.py` fills them in).

`with_memory` / `strip_memory` move a set of rows between the plain student prompt and one with memory
tokens after its first token (the teacher's targets do not depend on the student's prompt).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from sycojax.adapters import insert_after_bos
from sycojax.adapters.memory import memory_ids
from sycojax.methods.sycomode.spec import ConsolidationError, Spec
from sycojax.models import ModelConfig, check_length
from sycojax.models.tokenizer import chat_ids


@dataclasses.dataclass
class Prompts:
    """Token ids of the teacher (with context) and student (without) prompts for a list of queries."""

    teacher_prefix: list[int]  # shared by every teacher prompt: the context turn
    teacher_suffix: list[list[int]]  # per query: the rest of the teacher prompt
    student: list[list[int]]  # per query: the student prompt (memory tokens inserted when used)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def build_prompts(tok, cfg: ModelConfig, context: str, queries: Sequence[str], n_mem: int = 0) -> Prompts:
    if not context or not context.strip():
        raise ConsolidationError("the context is empty: pass --context='...' or --context_file=PATH with some text")
    if not queries:
        raise ConsolidationError("no queries: give --queries_file with one query per line (or another query source)")
    teacher = [chat_ids(tok, q, system=context) for q in queries]
    probe = [chat_ids(tok, s, system=context) for s in ("a", "b")]
    n = _common_prefix(*probe)
    for t in teacher:
        if t[:n] != probe[0][:n]:
            raise ConsolidationError("the chat template does not put the context before the query; cannot share it")
    student = [insert_after_bos(chat_ids(tok, q), cfg, n_mem) for q in queries]
    return Prompts(probe[0][:n], [t[n:] for t in teacher], student)


def check_fits(cfg: ModelConfig, prompts: Prompts, max_response_tokens: int) -> None:
    longest = len(prompts.teacher_prefix) + max(len(s) for s in prompts.teacher_suffix) + max_response_tokens + 1
    if longest > cfg.max_position_embeddings:
        raise ConsolidationError(
            f"context + query + response need {longest} tokens but the model's window is "
            f"{cfg.max_position_embeddings}: shorten the context, the queries or --max_response_tokens"
        )


def bucket_length(n: int, b: int = 16) -> int:
    """`n` rounded up to a multiple of `b`: the padded width of a set of rows (few compiled shapes)."""
    return -(-n // b) * b


def row_lengths(resp_pos, resp_weights, xp=jnp):
    """Real tokens per row: the last response token sits one after the position that predicts it."""
    return xp.max(xp.where(resp_weights > 0, resp_pos + 2, 0), axis=1)


@dataclasses.dataclass
class Targets:
    """Student-side rows with the teacher's targets at the response positions.

    Row i is `student[i] + response[i]` (right-padded); `resp_pos[i, j]` is the student position whose
    logits predict response token j (`resp_weights` = 1 for real tokens). Training keeps the teacher's
    top-k per response token; evaluation keeps the full distribution for an exact KL. Only response
    positions go through the LM head, never the prompt.
    """

    tokens: np.ndarray  # (N, T) int32
    resp_pos: np.ndarray  # (N, R) int32
    resp_weights: np.ndarray  # (N, R) float32
    topk_idx: np.ndarray | None = None  # (N, R, k)
    topk_logprobs: np.ndarray | None = None  # (N, R, k)
    teacher_logprobs: np.ndarray | None = None  # (N, R, V) full teacher log-probs (eval)

    def lengths(self) -> np.ndarray:
        """Real tokens per row (prompt + response): `row_lengths` on the host."""
        return row_lengths(self.resp_pos, self.resp_weights, np).astype(np.int32)

    def train_arrays(self) -> dict[str, np.ndarray]:
        return dict(tokens=self.tokens, resp_pos=self.resp_pos, resp_weights=self.resp_weights,
                    topk_idx=self.topk_idx, topk_logprobs=self.topk_logprobs,
                    num_tokens=self.resp_weights.sum(1).astype(np.int32))


def response_rows(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad: int,
                  width: int | None = None, r_max: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, resp_pos, resp_weights) of the right-padded rows `prompt + response` (`Targets`' layout): the
    logits at `len(prompt) - 1 + j` predict response token j. Width: the bucketed longest row unless given."""
    r_max = r_max or max(1, max(len(r) for r in responses))
    width = width or bucket_length(max(len(p) + len(r) for p, r in zip(prompts, responses)))
    tokens = np.full((len(prompts), width), pad, np.int32)
    resp_pos = np.zeros((len(prompts), r_max), np.int32)
    resp_w = np.zeros((len(prompts), r_max), np.float32)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        tokens[i, : len(p) + len(r)] = list(p) + list(r)
        resp_pos[i, : len(r)] = np.arange(len(p) - 1, len(p) - 1 + len(r))
        resp_w[i, : len(r)] = 1.0
    return tokens, resp_pos, resp_w


def context_lm_targets(tok, cfg: ModelConfig, context: str, spec: Spec) -> Targets:
    """SyCoMode's `causal_language_model`: next-token CE on the context text itself (memory tokens after BOS).

    Expressed as top-k targets with one certain token per position (log-prob 0), so the same loss serves.
    """
    ids = tok(context, add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        raise ConsolidationError("causal_language_model needs a context of at least two tokens")
    bos = cfg.bos_token_id if cfg.bos_token_id is not None else ids[0]
    row = insert_after_bos([bos] + ids, cfg, spec.n_mem)
    check_length(cfg, len(row), "the context")
    t = bucket_length(len(row))
    tokens = np.full((1, t), cfg.pad_token_id or 0, np.int32)
    tokens[0, : len(row)] = row
    pos = np.arange(spec.n_mem, len(row) - 1)  # from the last memory token (or BOS): predict the context
    topk_idx = np.zeros((1, len(pos), spec.topk), np.int32)
    topk_lp = np.full((1, len(pos), spec.topk), -1e9, np.float32)
    topk_idx[0, :, 0] = np.asarray(row)[pos + 1]
    topk_lp[0, :, 0] = 0.0
    return Targets(tokens, pos[None].astype(np.int32), np.ones((1, len(pos)), np.float32), topk_idx, topk_lp)


def with_memory(targets: Targets, n_mem: int, cfg: ModelConfig) -> Targets:
    """The same targets for a student whose prompt has `n_mem` memory tokens right after its first token.

    The teacher's distributions do not depend on the student's prompt, so a memory-token run reuses the
    teacher targets built for the plain student: the memory ids go in after position 0 of every row
    and the response positions move by `n_mem` (the targets themselves are indexed by response token).
    The inverse of `strip_memory`.
    """
    if n_mem == 0:
        return targets
    n = targets.tokens.shape[0]
    mem = np.broadcast_to(np.asarray(memory_ids(cfg, n_mem), np.int32), (n, n_mem))
    tokens = np.concatenate([targets.tokens[:, :1], mem, targets.tokens[:, 1:]], axis=1)
    shift = np.where(targets.resp_weights > 0, n_mem, 0).astype(targets.resp_pos.dtype)  # padding entries stay at 0
    return dataclasses.replace(targets, tokens=tokens, resp_pos=targets.resp_pos + shift)


def strip_memory(targets: Targets, n_mem: int, cfg: ModelConfig) -> Targets:
    """The same eval rows without memory tokens (the no-context baseline of a memory-token run)."""
    if n_mem == 0:
        return targets
    keep = ~((targets.tokens >= cfg.vocab_size) & (targets.tokens < cfg.vocab_size + n_mem))
    tokens = np.stack([np.concatenate([row[k], np.full(n_mem, row[-1])]) for row, k in zip(targets.tokens, keep)])
    return dataclasses.replace(targets, tokens=tokens.astype(np.int32),
                               resp_pos=np.maximum(targets.resp_pos - n_mem, 0))
