"""LoRA compression of gisting instructions (issue 5, Phase 1): one LoRA patch per instruction, by consolidation.

For each instruction of a gisting eval split (`sycojax.methods.gist.EVAL_SPLITS`), the instruction is
consolidated into its own LoRA patch with the SyCoMode recipe (`sycojax.methods.sycomode`), then the patched
model answers the split's examples of that instruction WITHOUT the instruction in its prompt:

    teacher: the frozen base, prompt = the gist runs' pos_control format minus the gist tokens
             (chatml: `{head}{instruction}\\n{input}{mid}`, i.e. user message = instruction + "\\n" + input)
    student: base + LoRA, prompt = the input only (chatml: `{head}{input}{mid}`, user message = input)

Training queries (inputs) for an instruction: other inputs of the same instruction in the train split where
it has them (the seen tasks), topped up with self-study inputs (the base model, shown the instruction,
writes example inputs; sampled like the teacher, first non-preamble line, de-duplicated); the evaluated
inputs of that instruction are never among them (compared case- and whitespace-insensitively). ShareGPT
(unseen) and MT-Bench (human) records have input "": there the instruction is the whole request, the only
query it will ever be asked is the empty one, and consolidating it means exactly "answer the empty message as
the instruction would have you answer" — so with `empty_input_query` (default) such an instruction trains on
`num_queries` teacher samples for the empty input (the teacher never sees the reference; the evaluation
compares greedy outputs with the references). Set it False to train on non-empty inputs only (train-split /
self-study ones), which tests transfer to a prompt the patch never saw.
The teacher answers each query (sampled) once, and its
top-k log-probs at every response token are computed once (`TeacherData`), shared by every rank. Each rank
r then trains LoRA r, alpha = 2r (scale 2 for every r) on all linear layers for `steps` AdamW steps
(cosine lr to 0, `batch_size` rows per step) of the top-k KL distillation loss (`sycomode.make_loss_fn`),
starting from the first r components of one largest-rank init (`nested_init`: the ranks are nested).

Evaluation per rank: the LoRA is merged into the weights (`merge_lora`); greedy outputs on the evaluated
examples' input-only prompts; ROUGE-L against the references (`rougeL`, over the `n_ref` examples that have
one), against given pos_control outputs (`rougeL_vs_pos`, over the `n_pos` examples found in the gist
eval's samples file, None when none is) and against the teacher's greedy outputs (`rougeL_vs_teacher`);
`loss` = teacher-forced loss per token of the reference completion (output + end of turn, cut as the
teacher-format encoding cuts it at `max_length`) after the student prompt, with the merged weights.

Conditions written into eval.json (`{split: {condition: {...}}}`, the shape of `gist.evaluate`):
`lora_r<r>` per rank; with `baselines`, also `lora_teacher` (the untrained base WITH the instruction in
its prompt: what the patch tries to reproduce) and `lora_r0` (the untrained base without it: no patch).
Both are scored on exactly the same examples as the ranks, which are a small subset of the gist
conditions' examples: compare `lora_r<r>` with them, not with gist runs scored on other `n`.
Extra keys per condition: `n_pos`, `n_instructions`, `rank`, `bytes` (the LoRA patch in fp32; equals
`gist.lora_bytes(cfg, r)` for all linear layers), `steps`, `lr`, `final_train_loss` (mean over
instructions), wall time per instruction (median over instructions, seconds): `teacher_s` (queries +
teacher responses + targets, once per instruction, shared by the ranks), `train_s`, `eval_s` and
`s_per_instruction` = teacher + train + eval (what compressing and serving one instruction at this rank
alone costs; the first instruction's times include compilation).

Examples: the first `num_examples` records of the split whose teacher prompt fits `max_length` (the pool the
gist conditions are scored on, with 0 instead of k gist tokens), grouped by instruction in order of first
appearance; the first `num_instructions` instructions, each with up to `examples_per_instruction` of its
examples (unseen / human: one example per instruction; seen: one instruction per task, many inputs).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sycojax import objectives as obj
from sycojax.adapters import LoraConfig, init_lora, merge_lora
from sycojax.data import PROMPT_FORMATS, GistExample, PromptTooLongError, chat_pieces, encode_gist_example
from sycojax.data.alpaca_plus import normalize_instruction
from sycojax.eval.rouge import rouge_l
from sycojax.infer.generate import GREEDY, Sampling, generate
from sycojax.masks import causal_padding
from sycojax.methods import sycomode as sm
from sycojax.methods.gist import EVAL_SPLITS, GistError, gist_token_id, lora_bytes, mean_completion_loss
from sycojax.models import Adapters, ModelConfig, forward, lm_head_weight
from sycojax.models.tokenizer import chat_ids
from sycojax.train.config import default_config
from sycojax.train.optim import make_optimizer

RANKS = (2, 8, 16)
TEACHER = "lora_teacher"
NO_PATCH = "lora_r0"
DETAILS_FILE = "eval_lora_details.json"
BUCKET = 64  # row lengths are rounded up to a multiple of this: few compiled shapes across instructions
SELF_STUDY_ASK = (
    "Here is an instruction for an assistant:\n\n{instruction}\n\nWrite one example of an input a user could "
    "give together with this instruction (a question, a text or data to work on). Reply with the input only."
)


class GistLoraError(GistError):
    """Bad input to the LoRA compression of gisting instructions; the message names the fix."""


def condition_name(rank: int) -> str:
    return f"lora_r{rank}"


def check_ranks(ranks: Sequence[Any]) -> tuple[int, ...]:
    """Positive, distinct integer ranks (as given); anything else is a `GistLoraError`."""
    if isinstance(ranks, (str, bytes)) or not ranks:
        raise GistLoraError(f"ranks must be a non-empty list of integers >= 1 (e.g. 2,8,16), got {ranks!r}")
    out = []
    for r in ranks:
        if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or r < 1:
            raise GistLoraError(f"bad LoRA rank {r!r}: ranks are integers >= 1 (e.g. 2,8,16)")
        out.append(int(r))
    if len(set(out)) != len(out):
        raise GistLoraError(f"duplicate LoRA rank in {out}: each rank is one condition")
    return tuple(out)


def parse_ranks(text: str | Sequence[str]) -> tuple[int, ...]:
    """`"2,8,16"` (or a list of strings, as absl's DEFINE_list gives) -> (2, 8, 16), checked."""
    items = text.split(",") if isinstance(text, str) else list(text)
    items = [str(x).strip() for x in items if str(x).strip()]
    try:
        ranks = [int(x) for x in items]
    except ValueError:
        raise GistLoraError(f"bad --ranks {text!r}: give integers >= 1, e.g. --ranks=2,8,16") from None
    return check_ranks(ranks)


@dataclasses.dataclass(frozen=True)
class LoraEvalSpec:
    """How each instruction is consolidated (the same for every instruction and split)."""

    ranks: tuple[int, ...] = RANKS
    targets: tuple[str, ...] = ("all",)
    steps: int = 8  # AdamW steps per rank (the rows are cycled through in batches of batch_size)
    lr: float = 2e-3  # the consolidation bench's LoRA lr (alpha / r = 2 there too)
    schedule: str = "cosine"  # to 0 at the last step
    clip_norm: float = 1.0
    batch_size: int = 8  # rows per step (num_queries × samples_per_query rows are cycled through)
    num_queries: int = 8  # training inputs per instruction
    samples_per_query: int = 1  # teacher responses per input
    max_response_tokens: int = 48  # length of each teacher response trained on
    teacher_temperature: float = 0.8
    teacher_top_p: float = 0.95
    topk: int = 64  # teacher log-probs kept per response token
    topk_tail: bool = True  # the teacher's mass outside the top k as one more class (objectives.distill)
    temperature: float = 1.0  # distillation temperature
    self_study_tokens: int = 48  # new tokens per self-study input (= max_response_tokens: one compiled sampler)
    self_study_tries: int = 4  # sampling rounds (of `gen_batch` candidates) before giving up
    gen_batch: int = 8  # rows per generation call (teacher responses, self-study)
    fmt: str = "chatml"  # the gist runs' prompt format
    max_length: int = 256  # prompt token budget (as the gist runs' data.max_length)
    empty_input_query: bool = True  # an instruction whose evaluated inputs are all "" trains on the empty input
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "ranks", check_ranks(self.ranks))
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.fmt not in PROMPT_FORMATS:
            raise GistLoraError(f"unknown prompt format {self.fmt!r}; choose one of {', '.join(PROMPT_FORMATS)}")
        for name in ("steps", "batch_size", "num_queries", "samples_per_query", "max_response_tokens", "topk",
                     "self_study_tokens", "self_study_tries", "gen_batch", "max_length"):
            if int(getattr(self, name)) < 1:
                raise GistLoraError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise GistLoraError(f"lr must be > 0, got {self.lr}")

    def lora(self, rank: int) -> LoraConfig:
        return LoraConfig(rank=int(rank), alpha=2.0 * rank, targets=self.targets)

    def distill_spec(self, rank: int) -> sm.Spec:
        return sm.Spec(method="lora", objective="distill_on_generated_text", lora=self.lora(rank),
                       temperature=float(self.temperature), topk=int(self.topk), topk_tail=bool(self.topk_tail),
                       max_response_tokens=int(self.max_response_tokens))

    def optim(self) -> dict[str, Any]:
        o = default_config().optim.to_dict()
        o.update(lr=float(self.lr), schedule=self.schedule, warmup_frac=0.0, clip_norm=float(self.clip_norm),
                 weight_decay=0.0)
        return o


# --------------------------------------------------------------------------- prompts


def _ids(tok: Any, text: str, special: bool) -> tuple[int, ...]:
    return tuple(tok(text, add_special_tokens=special)["input_ids"]) if text else ()


@dataclasses.dataclass(frozen=True)
class PromptIds:
    """One record's token ids: the teacher prompt (instruction + input), the student prompt (input only) and
    the reference completion (output + end of turn; () without an output)."""

    teacher: tuple[int, ...]
    student: tuple[int, ...]
    completion: tuple[int, ...]


def prompt_ids(record: Mapping[str, Any], tok: Any, *, fmt: str, chat: Any, gist_id: int,
               max_length: int | None) -> PromptIds:
    """Teacher = the gist format with 0 gist tokens (`encode_gist_example`); student = the same format with
    the instruction removed (chatml: user message = input; bare: `Input: {input}\\nOutput:`).

    A teacher prompt with no room left in `max_length` raises `PromptTooLongError`; the completion is cut as
    the teacher-format encoding cuts it (so every condition is scored on the same reference tokens).
    """
    with_out = record.get("output") is not None
    ex = encode_gist_example(dict(record), tok, gist_id=gist_id, num_gist_tokens=0, fmt=fmt, chat=chat,
                             with_completion=with_out, max_length=max_length)
    if not with_out and max_length is not None and len(ex.prompt) >= max_length:
        raise PromptTooLongError(f"prompt of {len(ex.prompt)} tokens fills max_length={max_length}")
    inp = record.get("input") or ""
    if fmt == "chatml":
        student = _ids(tok, chat.head, True) + _ids(tok, inp + chat.mid, False)
    else:
        student = _ids(tok, f"Input: {inp}\nOutput:" if inp else "Output:", True)
    return PromptIds(tuple(ex.prompt), student, tuple(ex.completion))


# --------------------------------------------------------------------------- instructions + queries


@dataclasses.dataclass
class Instruction:
    """One instruction of an eval split and the examples of it that are evaluated."""

    text: str
    records: list[dict]

    @property
    def key(self) -> str:
        return normalize_instruction(self.text)


def group_instructions(
    records: Sequence[dict], num_instructions: int, examples_per_instruction: int,
) -> list[Instruction]:
    """The first `num_instructions` distinct instructions (normalised) in order of first appearance, each
    with its first `examples_per_instruction` records."""
    groups: dict[str, Instruction] = {}
    for r in records:
        key = normalize_instruction(r["instruction"])
        if key not in groups:
            if len(groups) == num_instructions:
                continue
            groups[key] = Instruction(r["instruction"], [])
        if len(groups[key].records) < examples_per_instruction:
            groups[key].records.append(r)
    return list(groups.values())


def _norm(text: str) -> str:
    return " ".join(str(text).lower().split())


def pick_queries(candidates: Sequence[str], n: int, exclude: set[str], taken: Sequence[str] = (),
                 keep: Callable[[str], bool] | None = None) -> list[str]:
    """Up to `n` candidates, stripped, non-empty, de-duplicated, none equal (normalised) to `exclude` or `taken`,
    and accepted by `keep` (e.g. the teacher prompt fits max_length)."""
    seen = set(exclude) | {_norm(t) for t in taken}
    out = []
    for c in candidates:
        c = str(c).strip()
        if not c or _norm(c) in seen or (keep is not None and not keep(c)):
            continue
        seen.add(_norm(c))
        out.append(c)
        if len(out) == n:
            break
    return out


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


def _sample_texts(params, cfg, tok, prompt: Sequence[int], n: int, *, seed: int, max_new_tokens: int,
                  sampling: Sampling) -> list[str]:
    """`n` sampled continuations of one prompt, decoded."""
    rows = _batched_generate(params, cfg, [prompt] * n, max_new_tokens=max_new_tokens, batch_size=n,
                             sampling=sampling, seed=seed)
    return [tok.decode(r, skip_special_tokens=True) for r in rows]


def first_input_line(text: str) -> str:
    """The first line of a sampled self-study text that is not a preamble ("For example:", "Here is ...:");
    a leading "Input:" is dropped, surrounding quotes stripped."""
    for line in str(text).strip().split("\n"):
        line = line.strip()
        if line.lower().startswith("input:"):
            line = line[len("input:"):].strip()
        line = line.strip('"').strip()
        if not line or (line.endswith(":") and len(line) < 100):
            continue
        return line
    return ""


def self_study_inputs(params, cfg, tok, instruction: str, n: int, *, exclude: set[str], taken: Sequence[str] = (),
                      spec: LoraEvalSpec, seed: int = 0, keep: Callable[[str], bool] | None = None) -> list[str]:
    """Self-study: the base model, shown the instruction, writes example inputs (first line of each sample).

    Sampled as the teacher's responses (`teacher_temperature`, `teacher_top_p`, `gen_batch` rows), so with
    `self_study_tokens == max_response_tokens` both use one compiled sampler.
    """
    prompt = chat_ids(tok, SELF_STUDY_ASK.format(instruction=instruction[:2000]))
    out: list[str] = []
    for t in range(spec.self_study_tries):
        if len(out) >= n:
            break
        texts = _sample_texts(params, cfg, tok, prompt, spec.gen_batch, seed=seed + 97 * t,
                              max_new_tokens=spec.self_study_tokens,
                              sampling=Sampling(spec.teacher_temperature, spec.teacher_top_p))
        lines = [first_input_line(s) for s in texts]
        lines = [s for s in lines if len(s) >= 4]
        out += pick_queries(lines, n - len(out), exclude, list(taken) + out, keep)
    return out


def training_queries(
    instruction: Instruction, train_inputs: Mapping[str, Sequence[str]], n: int, *,
    self_study: Callable[[int, set[str], list[str]], list[str]], keep: Callable[[str], bool] | None = None,
) -> tuple[list[str], dict[str, int]]:
    """`(queries, {"train": a, "self_study": b})`: train-split inputs of the same instruction first, then
    self-study ones (`self_study(k, exclude, taken)`); never an input of an evaluated example; only
    queries `keep` accepts."""
    exclude = {_norm(r.get("input") or "") for r in instruction.records}
    queries = pick_queries(train_inputs.get(instruction.key, ()), n, exclude, keep=keep)
    n_train = len(queries)
    if len(queries) < n:
        queries += pick_queries(self_study(n - len(queries), exclude, list(queries)), n - len(queries), exclude,
                                queries, keep)
    leaked = {_norm(q) for q in queries} & exclude
    if leaked:  # pick_queries already drops them; a guard for any future query source
        raise GistLoraError(f"training queries include an evaluated input: {sorted(leaked)}")
    return queries, {"train": n_train, "self_study": len(queries) - n_train}


def instruction_queries(
    instruction: Instruction, train_inputs: Mapping[str, Sequence[str]], spec: LoraEvalSpec, *,
    self_study: Callable[[int, set[str], list[str]], list[str]], keep: Callable[[str], bool] | None = None,
) -> tuple[list[str], dict[str, int]]:
    """The training queries of one instruction: `num_queries` copies of the empty input when every evaluated
    input is empty and `spec.empty_input_query` (the teacher samples a different response for each), else
    `training_queries` (other inputs, never an evaluated one)."""
    if spec.empty_input_query and all(not (r.get("input") or "").strip() for r in instruction.records):
        return [""] * spec.num_queries, {"empty_input": spec.num_queries}
    return training_queries(instruction, train_inputs, spec.num_queries, self_study=self_study, keep=keep)


def train_inputs_by_instruction(train: Sequence[dict]) -> dict[str, list[str]]:
    """Normalised instruction -> the non-empty inputs it has in the train split (train order)."""
    out: dict[str, list[str]] = {}
    for r in train or ():
        inp = (r.get("input") or "").strip()
        if inp and r.get("instruction"):
            out.setdefault(normalize_instruction(r["instruction"]), []).append(inp)
    return out


# --------------------------------------------------------------------------- teacher (once per instruction)


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


# --------------------------------------------------------------------------- one rank


@functools.lru_cache(maxsize=32)
def _train_step(cfg: ModelConfig, dspec: sm.Spec, optim_items: tuple, steps: int):
    tx, _ = make_optimizer(dict(optim_items), steps)
    loss_fn = sm.make_loss_fn(cfg, dspec)

    @jax.jit
    def step(trainable, opt_state, params, batch):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, {"base": params}, batch, None)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    return tx, step


def nested_init(params, cfg: ModelConfig, spec: LoraEvalSpec, seed: int = 0) -> dict:
    """`init_lora` at the largest rank (numpy); rank r starts from its first r components (`slice_lora`).

    Kaiming-uniform A has a bound that depends on the input size only, so the first r rows are a rank-r
    init with the same distribution; the ranks are nested (rank 2's init is part of rank 16's).
    """
    return jax.device_get(init_lora(params, cfg, spec.lora(max(spec.ranks)), jax.random.key(seed)))


def slice_lora(tree: Mapping[str, Any], rank: int) -> dict:
    """The first `rank` components of every LoRA pair: `A[:, :r, :]`, `B[:, :, :r]`."""

    def cut(node):
        if isinstance(node, Mapping) and "lora_A" in node:
            return {"lora_A": node["lora_A"][:, :rank, :], "lora_B": node["lora_B"][:, :, :rank]}
        return {k: cut(v) for k, v in node.items()}

    return cut(tree)


def train_lora(params, cfg: ModelConfig, teacher: TeacherData, spec: LoraEvalSpec, rank: int,
               seed: int = 0, init: Mapping[str, Any] | None = None) -> tuple[dict, list[float]]:
    """LoRA r (alpha 2r) trained for `spec.steps` steps on the shared targets; `(lora tree, losses)`.

    `init`: a larger-rank init (`nested_init`) to start from its first r components; default `init_lora`.
    """
    dspec = spec.distill_spec(rank)
    tx, step = _train_step(cfg, dspec, tuple(sorted(spec.optim().items())), int(spec.steps))
    lora = slice_lora(init, rank) if init is not None else init_lora(params, cfg, dspec.lora, jax.random.key(seed))
    trainable = {"lora": jax.tree.map(jnp.asarray, lora)}
    opt_state = tx.init(trainable)
    arrays = {k: v for k, v in teacher.targets.train_arrays().items() if k != "num_tokens"}
    n_rows = arrays["tokens"].shape[0]
    bs = spec.batch_size
    order = np.random.default_rng(seed).permutation(n_rows) if n_rows > bs else np.arange(n_rows)
    losses = []
    for s in range(spec.steps):
        start = (s * bs) % n_rows
        rows = order[start : start + bs]
        batch = {k: jnp.asarray(v[rows]) for k, v in arrays.items()}
        trainable, opt_state, loss = step(trainable, opt_state, params, batch)
        losses.append(float(loss))
    return jax.device_get(trainable["lora"]), losses


# --------------------------------------------------------------------------- scoring


def _completion_loss(params, cfg, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], *,
                     gist_id: int, pad_id: int, batch_size: int, max_length: int) -> float | None:
    """Teacher-forced loss per completion token of `completions` after `prompts` (full causal attention)."""
    pairs = [(tuple(p), tuple(c)) for p, c in zip(prompts, completions) if c]
    if not pairs:
        return None
    examples = [GistExample(p, (), (), c) for p, c in pairs]
    length = _bucket(max(max_length, max(len(e.tokens) for e in examples)))
    return mean_completion_loss(params, Adapters(), cfg, examples, gist_id=gist_id, condition="pos_control",
                                length=length, pad_id=pad_id, batch_size=batch_size)


def _pad_id(cfg: ModelConfig, tok: Any) -> int:
    for p in (cfg.pad_token_id, getattr(tok, "pad_token_id", None), *(cfg.eos_ids or ())):
        if p is not None:
            return int(p)
    return 0


def pos_outputs_from_samples(samples: Mapping[str, Any] | str | os.PathLike,
                             condition: str = "pos_control") -> dict[str, dict[tuple[str, str], str]]:
    """`{split: {(instruction, input): output}}` of `condition` from a gist eval's `eval_samples.json`."""
    if not isinstance(samples, Mapping):
        path = Path(samples)
        if not path.is_file():
            raise GistLoraError(f"--samples_json {str(path)!r} does not exist (the gist eval writes eval_samples.json)")
        samples = json.loads(path.read_text())
    out: dict[str, dict[tuple[str, str], str]] = {}
    for split, rows in samples.items():
        for row in rows or ():
            if isinstance(row, Mapping) and isinstance(row.get(condition), str):
                out.setdefault(split, {})[(row["instruction"], row.get("input") or "")] = row[condition]
    return out


def _median(xs: Sequence[float]) -> float | None:
    return round(float(statistics.median(xs)), 2) if xs else None


def _mean(xs: Sequence[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def _metrics(preds: Sequence[str], records: Sequence[dict], *, pos: Mapping[tuple[str, str], str],
             teacher: Sequence[str] | None, loss: float | None) -> dict[str, Any]:
    ref = [i for i, r in enumerate(records) if r.get("output")]
    with_pos = [i for i, r in enumerate(records) if (r["instruction"], r.get("input") or "") in pos]
    return {
        "rougeL": rouge_l([preds[i] for i in ref], [records[i]["output"] for i in ref]) if ref else None,
        "rougeL_vs_pos": rouge_l([preds[i] for i in with_pos],
                                 [pos[(records[i]["instruction"], records[i].get("input") or "")] for i in with_pos])
        if with_pos else None,
        "n": len(records),
        "n_ref": len(ref),
        "loss": loss,
        "n_pos": len(with_pos),
        "rougeL_vs_teacher": rouge_l(list(preds), list(teacher)) if teacher is not None else None,
    }


# --------------------------------------------------------------------------- the evaluation


def evaluate_lora(
    spec: LoraEvalSpec,
    *,
    model: tuple,
    tokenizer: Any,
    data_splits: Mapping[str, Sequence[dict]],
    splits: Sequence[str] = ("seen", "unseen", "human"),
    num_instructions: int = 8,
    examples_per_instruction: int = 4,
    num_examples: int = 100,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    baselines: bool = True,
    pos_outputs: Mapping[str, Mapping[tuple[str, str], str]] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Consolidate each selected instruction per rank and score it (see the module docstring).

    `model = (cfg, params, info)`. Returns `{"eval": {split: {condition: metrics}}, "details": {split: {...}}}`.
    """
    unknown = [s for s in splits if s not in EVAL_SPLITS]
    if unknown or not splits:
        raise GistLoraError(f"unknown split(s) {unknown or list(splits)}; choose among {', '.join(EVAL_SPLITS)}")
    for name, v in (("num_instructions", num_instructions), ("examples_per_instruction", examples_per_instruction),
                    ("num_examples", num_examples), ("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if int(v) < 1:
            raise GistLoraError(f"{name} must be >= 1, got {v}")
    cfg, params, _info = model
    params = jax.tree.map(jnp.asarray, params)  # on the device once, not at every step / generate call
    tok = tokenizer
    gid = gist_token_id(cfg, tok)
    pad = _pad_id(cfg, tok)
    chat = chat_pieces(tok) if spec.fmt == "chatml" else None
    for r in spec.ranks:
        if r > min(cfg.hidden_size, cfg.intermediate_size):
            raise GistLoraError(f"bad LoRA rank {r}: larger than the model's hidden size {cfg.hidden_size}")
    pos_outputs = pos_outputs or {}
    train_inputs = train_inputs_by_instruction(data_splits.get("train") or [])
    dec = functools.partial(tok.decode, skip_special_tokens=True)

    # which examples: the pool the gist conditions are scored on, grouped by instruction
    chosen: dict[str, list[Instruction]] = {}
    for split in splits:
        records = list(data_splits.get(EVAL_SPLITS[split]) or [])[:num_examples]
        if not records:
            raise GistLoraError(f"split {split!r} ({EVAL_SPLITS[split]}) is empty; check the data sizes")
        fit = []
        for r in records:
            try:
                prompt_ids(r, tok, fmt=spec.fmt, chat=chat, gist_id=gid, max_length=spec.max_length)
            except PromptTooLongError:
                continue
            fit.append(r)
        if not fit:
            raise GistLoraError(f"no prompt of split {split!r} fits max_length={spec.max_length}; raise max_length")
        chosen[split] = group_instructions(fit, num_instructions, examples_per_instruction)
        log(f"{split}: {len(chosen[split])} instruction(s), "
            f"{sum(len(i.records) for i in chosen[split])} example(s) (of {len(fit)} that fit)")

    init = nested_init(params, cfg, spec, spec.seed)  # every instruction and rank starts from it
    table: dict[str, dict[str, dict[str, Any]]] = {}
    details: dict[str, dict[str, Any]] = {}
    for split in splits:
        names = [condition_name(r) for r in spec.ranks] + ([TEACHER, NO_PATCH] if baselines else [])
        preds: dict[str, list[str]] = {c: [] for c in names}
        teacher_preds: list[str] = []
        records: list[dict] = []
        loss_sums = {c: [0.0, 0] for c in names}  # loss weighted by completion tokens over instructions
        times = {c: {"teacher_s": [], "train_s": [], "eval_s": [], "s_per_instruction": []} for c in names}
        final_losses: dict[str, list[float]] = {c: [] for c in names}
        inst_details, skipped = [], []
        for k, instr in enumerate(chosen[split]):
            t0 = time.perf_counter()
            seed = spec.seed + 1009 * k

            def fits(q, instr=instr):
                return _fits(q, instr, tok, spec, chat, gid)

            def study(m, exclude, taken, instr=instr, seed=seed, fits=fits):
                return self_study_inputs(params, cfg, tok, instr.text, m, exclude=exclude, taken=taken, spec=spec,
                                         seed=seed, keep=fits)

            queries, sources = instruction_queries(instr, train_inputs, spec, self_study=study, keep=fits)
            if not queries:
                log(f"  {split} [{k + 1}] skipped: no training query (that fits max_length) ({instr.text[:60]!r})")
                skipped.append(instr.text)
                continue
            teacher = build_teacher(params, cfg, tok, instr, queries, sources, spec, chat=chat, gist_id=gid, seed=seed,
                                    t_start=t0)
            ids = [prompt_ids(r, tok, fmt=spec.fmt, chat=chat, gist_id=gid, max_length=spec.max_length)
                   for r in instr.records]
            student_prompts = [p.student for p in ids]
            completions = [p.completion for p in ids]
            n_tok = sum(len(c) for c in completions)
            records += instr.records
            row = {"instruction": instr.text, "queries": queries, "query_sources": sources,
                   "teacher_responses": teacher.responses[:2], "teacher_s": round(teacher.seconds, 2), "ranks": {}}

            t1 = time.perf_counter()
            cur_teacher = None
            if baselines:
                cur_teacher = [dec(x).strip() for x in _batched_generate(
                    params, cfg, [p.teacher for p in ids], max_new_tokens=max_new_tokens, batch_size=batch_size)]
                teacher_preds += cur_teacher
                t_loss = _completion_loss(params, cfg, [p.teacher for p in ids], completions, gist_id=gid,
                                          pad_id=pad, batch_size=batch_size, max_length=spec.max_length)
                _add_loss(loss_sums[TEACHER], t_loss, n_tok)
                preds[TEACHER] += cur_teacher
                t2 = time.perf_counter()
                base_out = [dec(x).strip() for x in _batched_generate(
                    params, cfg, student_prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)]
                b_loss = _completion_loss(params, cfg, student_prompts, completions, gist_id=gid, pad_id=pad,
                                          batch_size=batch_size, max_length=spec.max_length)
                _add_loss(loss_sums[NO_PATCH], b_loss, n_tok)
                preds[NO_PATCH] += base_out
                t3 = time.perf_counter()
                for c, dt in ((TEACHER, t2 - t1), (NO_PATCH, t3 - t2)):
                    times[c]["eval_s"].append(dt)
                    times[c]["s_per_instruction"].append(dt)
                row["outputs"] = {TEACHER: cur_teacher, NO_PATCH: base_out}
            else:
                row["outputs"] = {}
            for r in spec.ranks:
                c = condition_name(r)
                t_tr = time.perf_counter()
                lora, losses = train_lora(params, cfg, teacher, spec, r, seed=spec.seed, init=init)
                t_ev = time.perf_counter()
                merged = merge_lora(params, lora, cfg, spec.lora(r).scale)
                out = [dec(x).strip() for x in _batched_generate(
                    merged, cfg, student_prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)]
                loss = _completion_loss(merged, cfg, student_prompts, completions, gist_id=gid, pad_id=pad,
                                        batch_size=batch_size, max_length=spec.max_length)
                t_end = time.perf_counter()
                del merged
                preds[c] += out
                _add_loss(loss_sums[c], loss, n_tok)
                final_losses[c].append(losses[-1])
                times[c]["teacher_s"].append(teacher.seconds)
                times[c]["train_s"].append(t_ev - t_tr)
                times[c]["eval_s"].append(t_end - t_ev)
                times[c]["s_per_instruction"].append(teacher.seconds + t_end - t_tr)
                row["outputs"][c] = out
                row["ranks"][c] = {"bytes": sm.tree_bytes(lora), "loss_curve": [round(x, 4) for x in losses],
                                   "train_s": round(t_ev - t_tr, 2), "eval_s": round(t_end - t_ev, 2)}
                log(f"  {split} [{k + 1}/{len(chosen[split])}] r={r}: distill loss {losses[0]:.3f} -> {losses[-1]:.3f}"
                    f", train {t_ev - t_tr:.1f}s, eval {t_end - t_ev:.1f}s")
            row["examples"] = [{"input": rec.get("input") or "", "reference": rec.get("output"),
                                **{c: row["outputs"][c][i] for c in row["outputs"]}}
                               for i, rec in enumerate(instr.records)]
            del row["outputs"]
            inst_details.append(row)
            log(f"  {split} [{k + 1}/{len(chosen[split])}] {len(queries)} queries {sources}, teacher "
                f"{teacher.seconds:.1f}s, total {time.perf_counter() - t0:.1f}s: {instr.text[:60]!r}")
        if not records:
            raise GistLoraError(f"split {split!r}: every instruction was skipped (no training query fits "
                                f"max_length={spec.max_length})")
        pos = pos_outputs.get(split, {})
        table[split] = {}
        n_instr = len(inst_details)
        for c in names:
            s, cnt = loss_sums[c]
            m = _metrics(preds[c], records, pos=pos, teacher=teacher_preds if baselines else None,
                         loss=s / cnt if cnt else None)
            m["n_instructions"] = n_instr
            if c in (TEACHER, NO_PATCH):
                m.update(rank=0, bytes=0)
            else:
                r = int(c.removeprefix("lora_r"))
                m.update(rank=r, alpha=2.0 * r, bytes=lora_bytes(cfg, r, spec.targets), steps=spec.steps, lr=spec.lr,
                         num_queries=_mean([sum(d["query_sources"].values()) for d in inst_details]),
                         final_train_loss=_mean(final_losses[c]))
            m.update({k: _median(v) for k, v in times[c].items() if v})
            table[split][c] = m
        details[split] = {"settings": dataclasses.asdict(spec), "examples_per_instruction": examples_per_instruction,
                          "num_examples": num_examples, "max_new_tokens": max_new_tokens,
                          "instructions": inst_details, "skipped": skipped}
    return {"eval": table, "details": details}


def _add_loss(acc: list, loss: float | None, n_tok: int) -> None:
    if loss is not None and n_tok:
        acc[0] += loss * n_tok
        acc[1] += n_tok


def _fits(query: str, instr: Instruction, tok, spec: LoraEvalSpec, chat, gid: int) -> bool:
    try:
        prompt_ids({"instruction": instr.text, "input": query, "output": None}, tok, fmt=spec.fmt, chat=chat,
                   gist_id=gid, max_length=spec.max_length)
    except PromptTooLongError:
        return False
    return True


# --------------------------------------------------------------------------- eval.json


def _write_json_atomic(path: Path, data: Any) -> None:
    """Temp file in the same directory + `os.replace`; keeps an existing file's mode (new: 0666 & ~umask)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        mode = path.stat().st_mode & 0o777
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_json_dict(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise GistLoraError(f"{path} is not valid JSON ({e}); nothing was written") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise GistLoraError(f"{path} is not an eval table {{split: {{condition: metrics}}}}; nothing was written")
    return data


def read_eval_json(path: str | os.PathLike) -> dict:
    """The eval table at `path` ({} when missing); a file that is not one is a `GistLoraError`."""
    return _read_json_dict(Path(path))


def add_to_eval_json(path: str | os.PathLike, table: Mapping[str, Mapping[str, Any]]) -> dict:
    """Add (or replace) `table`'s conditions in the eval.json at `path`, keeping every other entry; creates
    the file when missing; written atomically (temp file + os.replace). Returns the merged table."""
    path = Path(path)
    merged = _read_json_dict(path)
    for split, conds in table.items():
        merged.setdefault(split, {}).update({c: dict(m) for c, m in conds.items()})
    _write_json_atomic(path, merged)
    return merged


def details_path(eval_json: str | os.PathLike) -> Path:
    return Path(eval_json).parent / DETAILS_FILE


def write_details(path: str | os.PathLike, details: Mapping[str, Any]) -> None:
    """Per-split details (queries, outputs, curves) next to eval.json; other splits already there are kept."""
    path = Path(path)
    merged = _read_json_dict(path)
    merged.update({k: dict(v) for k, v in details.items()})
    _write_json_atomic(path, merged)


def format_table(table: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """The LoRA conditions as text: metrics, patch size and median seconds per instruction."""

    def f(x, fmt=".1f"):
        return "—" if x is None else format(x, fmt)

    head = (f"{'split':<7} {'condition':<13} {'n':>3} {'instr':>5} {'ROUGE-L':>8} {'vs pos':>7} {'vs tch':>7} "
            f"{'loss':>6} {'MB':>6} {'s/instr':>8}")
    lines = [head]
    for split, conds in table.items():
        for name, m in conds.items():
            if not name.startswith("lora_"):
                continue
            lines.append(
                f"{split:<7} {name:<13} {m['n']:>3} {m.get('n_instructions', 0):>5} {f(m['rougeL']):>8} "
                f"{f(m['rougeL_vs_pos']):>7} {f(m.get('rougeL_vs_teacher')):>7} {f(m['loss'], '.3f'):>6} "
                f"{f(m.get('bytes', 0) / 1e6, '.2f'):>6} {f(m.get('s_per_instruction')):>8}")
    return "\n".join(lines)


__all__ = [
    "DETAILS_FILE", "NO_PATCH", "RANKS", "TEACHER", "GistLoraError", "Instruction", "LoraEvalSpec", "PromptIds",
    "TeacherData", "add_to_eval_json", "build_teacher", "check_ranks", "condition_name", "details_path",
    "evaluate_lora", "first_input_line", "format_table", "group_instructions", "nested_init", "parse_ranks",
    "pick_queries", "pos_outputs_from_samples", "prompt_ids", "read_eval_json", "self_study_inputs", "slice_lora",
    "train_inputs_by_instruction", "train_lora", "training_queries", "write_details",
]
