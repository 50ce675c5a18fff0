"""SyCoMode: consolidate a context (system prompt, facts, document) into LoRA, memory tokens or weights.

Teacher = frozen base model WITH the context as its system turn; student = the model WITHOUT it (the
template's default system turn), plus the trainable tree. Training makes
`P(response | query; θ')  ≈  P(response | context, query; θ)`.

Data flow (the teacher runs once; every training step reuses its targets):

1. `teacher_responses`: the teacher answers each training query (sampled) and each eval query
   (greedy). The context's K/V is computed once for the whole batch (`generate(prefix=...)`).
2. `teacher_targets`: one teacher forward over `[context prefix][query + response]`, again with the
   prefix computed once, keeps the top-k log-probs at every response position (Cartridges-style
   targets), aligned to the student's token positions; eval queries keep the full distribution.
3. `loss_fn`: student forward on `[student prompt + response]` (memory tokens after BOS when used)
   and `distill_topk_from_hidden` (the student's logits are computed in chunks, never all at once).
4. The shared loop `sycojax.train.train` runs the steps, checkpoints and metrics; `evaluate` gives
   the per-token KL(teacher‖student) on the held-out queries' teacher responses.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from sycojax import objectives as obj
from sycojax.adapters import LoraConfig, init_lora, init_memory, insert_after_bos, merge_lora
from sycojax.infer.generate import GREEDY, Sampling, generate
from sycojax.masks import causal_padding
from sycojax.masks import packing as pk
from sycojax.models import Adapters, ModelConfig, check_length, forward, init_cache, lm_head_weight
from sycojax.models.tokenizer import chat_ids

METHODS = ("lora", "memory", "full")
OBJECTIVES = ("distill_on_generated_text", "distill_on_output_logits", "causal_language_model")


class ConsolidationError(ValueError):
    """Bad input to a consolidation run; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class Spec:
    """What to train and against which targets (static: part of the compiled loss)."""

    method: str = "lora"  # lora | memory | full
    objective: str = "distill_on_generated_text"
    lora: LoraConfig = LoraConfig(rank=8, alpha=16.0, targets=("all",))
    num_mem_tokens: int = 8
    mem_init: str = "context"  # mean | context
    temperature: float = 1.0  # distillation temperature
    topk: int = 64  # teacher top-k kept per position
    topk_tail: bool = False  # the teacher's mass outside the top k as one more class (objectives.distill)
    max_response_tokens: int = 64
    teacher_sampling: Sampling = Sampling(temperature=0.8, top_p=0.95)
    samples_per_query: int = 1
    last_only: bool = False  # upstream's last-position-only distillation

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConsolidationError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.objective not in OBJECTIVES:
            raise ConsolidationError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.method == "memory" and self.num_mem_tokens < 1:
            raise ConsolidationError("method=memory needs --num_mem_tokens >= 1 "
                                     "(0 means: train the weights, method=full)")

    @property
    def n_mem(self) -> int:
        return self.num_mem_tokens if self.method == "memory" else 0


# --------------------------------------------------------------------------- prompts


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


# --------------------------------------------------------------------------- teacher (runs once)


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


def bucket_length(n: int, b: int = 16) -> int:
    """`n` rounded up to a multiple of `b`: the padded width of a set of rows (few compiled shapes)."""
    return -(-n // b) * b


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
    r_max = max(1, max(len(r) for r in responses))
    t_student = bucket_length(max(len(s) + len(r) for s, r in zip(prompts.student, responses)))
    t_teacher = bucket_length(max(len(s) + len(r) for s, r in zip(prompts.teacher_suffix, responses)))
    check_length(cfg, len(prompts.teacher_prefix) + t_teacher, "context + query + response")
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
    tokens = np.full((n, t_student), pad, np.int32)
    resp_pos = np.zeros((n, r_max), np.int32)
    resp_w = np.zeros((n, r_max), np.float32)
    for i, (s, r) in enumerate(zip(prompts.student, responses)):
        row = list(s) + list(r)
        tokens[i, : len(row)] = row
        resp_pos[i, : len(r)] = np.arange(len(s) - 1, len(s) - 1 + len(r))
        resp_w[i, : len(r)] = 1.0
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


# --------------------------------------------------------------------------- trainable trees + loss


def init_trainable(params, cfg: ModelConfig, spec: Spec, key, context_ids: Sequence[int] = ()) -> dict:
    if spec.method == "lora":
        return {"lora": init_lora(params, cfg, spec.lora, key)}
    if spec.method == "memory":
        return {"memory": init_memory(params, cfg, spec.num_mem_tokens, spec.mem_init, context_ids)}
    return {"base": jax.tree.map(jnp.asarray, params)}


def split_trees(params, trainable: dict, spec: Spec) -> tuple[dict, Adapters]:
    """(base params to run, adapters) for a trainable tree of any method."""
    if spec.method == "full":
        return trainable["base"], Adapters()
    if spec.method == "lora":
        return params, Adapters(lora=trainable["lora"], lora_scale=spec.lora.scale)
    return params, Adapters(embeddings=trainable["memory"])


def row_lengths(resp_pos, resp_weights, xp=jnp):
    """Real tokens per row: the last response token sits one after the position that predicts it."""
    return xp.max(xp.where(resp_weights > 0, resp_pos + 2, 0), axis=1)


def packing_plan(targets: Targets, rows: int, enabled: bool = True, share_prefix: bool = True) -> pk.Packing | None:
    """How the loss packs its rows (`masks.packing`): `rows` consecutive rows of a (per-device) micro-batch
    end to end in one row, when that saves >= 10% of the padded slots; None = unpacked. With `share_prefix`,
    the leading tokens every row has in common (the chat template's system turn, the memory tokens) are held
    once per packed row (`packing.shared_prefix`): the same loss and gradients, fewer tokens."""
    if not enabled:
        return None
    lengths = targets.lengths()
    prefix = pk.shared_prefix(targets.tokens, lengths) if share_prefix else 0
    return pk.plan(lengths, rows, targets.tokens.shape[1], prefix=prefix)


def loop_packing(targets: Targets, c, enabled: bool = True) -> pk.Packing | None:
    """`packing_plan` for a run of the shared loop (`sycojax.train.train`) with config `c`: each step's
    `c.train.batch_size` rows split into `c.train.grad_accum` micro-batches over the data-parallel devices
    of `c.mesh`, and each device packs its own rows (groups never straddle two devices)."""
    from sycojax.train import sharding as shd  # the loop's mesh: the only training import a method needs here

    dp = shd.data_parallel_size(shd.make_mesh(c.mesh.to_dict()))
    return packing_plan(targets, int(c.train.batch_size) // int(c.train.grad_accum) // dp, enabled)


def response_hidden(params, adapters: Adapters, cfg: ModelConfig, tokens, resp_pos, lengths,
                    packing: pk.Packing | None = None):
    """The student's final hidden states at the response positions, (B, R, D): the rows right-padded (causal
    alone keeps their real tokens clean) or, with `packing`, packed (`masks.packing`; `lengths` = real tokens
    per row). Only these positions go through the LM head."""
    if packing is None:
        positions = jnp.arange(tokens.shape[1])[None].repeat(tokens.shape[0], 0)
        out = forward(params, tokens, cfg=cfg, positions=positions, mask=causal_padding(jnp.ones(tokens.shape, bool)),
                      adapters=adapters, return_logits=False)
        return jnp.take_along_axis(out.final_hidden, resp_pos[..., None], axis=1)
    tokens, positions, mask, starts = pk.pack(tokens, lengths, packing)
    out = forward(params, tokens, cfg=cfg, positions=positions, mask=mask, adapters=adapters, return_logits=False)
    return pk.gather(out.final_hidden, starts, resp_pos, packing)


def make_loss_fn(cfg: ModelConfig, spec: Spec, packing: pk.Packing | None = None):
    """`loss_fn(trainable, frozen, batch, rng)` for `sycojax.train.train` (batch from `Targets.train_arrays`).

    With `packing` (`packing_plan`), each group of `packing.rows` rows runs as one row of `packing.length`
    tokens with a block-diagonal causal mask, the prefix its rows share held once: the same loss and
    gradients without the padding slots' compute or the prefix's copies.

    loss = Σ_j w_j · CE(teacher top-k at response token j ‖ softmax(student logits / T)) / Σ_j w_j,
    which is KL(teacher‖student) on the top-k support plus the (constant) teacher top-k entropy; with
    `spec.topk_tail` the teacher's mass outside the top k is one more class (the configs' default: the
    renormalised loss lets the student drop the tail, and its full-vocabulary KL then plateaus — on
    SmolLM2, pirate persona, 12 steps: held-out KL 0.560 → 0.206 renormalised, → 0.120 with the tail).
    """

    def loss_fn(trainable, frozen, batch, rng):
        del rng
        params, adapters = split_trees(frozen.get("base"), trainable, spec)
        lengths = row_lengths(batch["resp_pos"], batch["resp_weights"])
        h = response_hidden(params, adapters, cfg, batch["tokens"], batch["resp_pos"], lengths, packing)
        weights = batch["resp_weights"]
        if spec.last_only:
            weights = obj.last_only_weights(weights)
        loss = obj.distill_topk_from_hidden(
            h, lm_head_weight(params, cfg), batch["topk_idx"], batch["topk_logprobs"], weights,
            temperature=spec.temperature, tail=spec.topk_tail,
        )
        return loss, {"distill_ce": loss}

    return loss_fn


# --------------------------------------------------------------------------- evaluation


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


def strip_memory(targets: Targets, n_mem: int, cfg: ModelConfig) -> Targets:
    """The same eval rows without memory tokens (the no-context baseline of a memory-token run)."""
    if n_mem == 0:
        return targets
    keep = ~((targets.tokens >= cfg.vocab_size) & (targets.tokens < cfg.vocab_size + n_mem))
    tokens = np.stack([np.concatenate([row[k], np.full(n_mem, row[-1])]) for row, k in zip(targets.tokens, keep)])
    return dataclasses.replace(targets, tokens=tokens.astype(np.int32),
                               resp_pos=np.maximum(targets.resp_pos - n_mem, 0))


def student_params(params, trainable, cfg: ModelConfig, spec: Spec) -> tuple[dict, Adapters]:
    """Params + adapters for fast inference: LoRA merged into the weights."""
    base, adapters = split_trees(params, trainable, spec)
    if spec.method == "lora":
        return merge_lora(base, adapters.lora, cfg, adapters.lora_scale), Adapters()
    return base, adapters


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


def tree_bytes(tree: Any) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


# --------------------------------------------------------------------------- serving a consolidated model


@dataclasses.dataclass
class Consolidated:
    """A base model plus a saved trainable tree, ready to chat without the context."""

    cfg: ModelConfig
    params: dict  # base
    tok: Any
    spec: Spec
    trainable: dict
    context: str
    meta: dict

    def student(self) -> tuple[dict, Adapters]:
        return student_params(self.params, self.trainable, self.cfg, self.spec)


def spec_from_dict(d: dict) -> Spec:
    d = dict(d)
    lo = d.pop("lora")
    ts = d.pop("teacher_sampling")
    return Spec(lora=LoraConfig(lo["rank"], lo["alpha"], tuple(lo["targets"])), teacher_sampling=Sampling(**ts), **d)


def load_consolidated(path: str) -> Consolidated:
    """Load `<workdir>/adapter` and the base model it names; refuse a base whose content hash differs."""
    from pathlib import Path  # noqa: PLC0415

    from sycojax.adapters.export import load_tree  # noqa: PLC0415
    from sycojax.models.loading import load_model  # noqa: PLC0415
    from sycojax.models.tokenizer import load_tokenizer  # noqa: PLC0415

    d = Path(path)
    if (d / "adapter").is_dir():
        d = d / "adapter"
    tree, meta = load_tree(d)
    cfg, params, info = load_model(meta["model"])
    if meta.get("base_hash") and info.content_hash != meta["base_hash"]:
        raise ConsolidationError(
            f"the adapter in {d} was trained on a base with hash {meta['base_hash']}, but {meta['model']!r} now "
            f"loads {info.content_hash}; reinstall the same base model or re-run the consolidation"
        )
    tree = jax.tree.map(jnp.asarray, tree)
    return Consolidated(cfg, params, load_tokenizer(meta["model"]), spec_from_dict(meta["spec"]), tree,
                        meta["context"], meta)


def reply(model: Consolidated, message: str, *, history=None, max_new_tokens: int = 128, compare: bool = False) -> dict:
    """The consolidated model's greedy reply (and, with `compare`, the teacher's and the baseline's)."""
    dec = functools.partial(model.tok.decode, skip_special_tokens=True)
    p, a = model.student()
    ids = insert_after_bos(chat_ids(model.tok, message, history=history), model.cfg, model.spec.n_mem)
    out = {"student": dec(generate(p, model.cfg, [ids], max_new_tokens=max_new_tokens, adapters=a).rows()[0]).strip()}
    if compare:
        t_ids = chat_ids(model.tok, message, system=model.context, history=history)
        b_ids = chat_ids(model.tok, message, history=history)
        out["teacher"] = dec(generate(model.params, model.cfg, [t_ids],
                                      max_new_tokens=max_new_tokens).rows()[0]).strip()
        out["baseline"] = dec(generate(model.params, model.cfg, [b_ids],
                                       max_new_tokens=max_new_tokens).rows()[0]).strip()
    return out
