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

Where each part lives (the shape every method in `sycojax/methods/` follows):

    spec.py     `LoraEvalSpec`, rank parsing, condition names, `GistLoraError`
    data.py     teacher / student prompts of a record (`prompt_ids`), instructions, training queries
    teacher.py  the teacher once per instruction (`build_teacher` → `TeacherData`, shared by the ranks)
    trees.py    one LoRA per rank: `nested_init`, `slice_lora`, `train_lora` (loss: `sycomode.make_loss_fn`)
    eval.py     scoring: completion loss, ROUGE-L against references / pos_control / teacher
    report.py   eval.json (atomic merge), the details file, the table as text
    here        the entry point `evaluate_lora`, and the self-study inputs it asks the base model for
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from sycojax.adapters import merge_lora
from sycojax.data import PromptTooLongError, chat_pieces
from sycojax.infer.generate import Sampling
from sycojax.methods import sycomode as sm
from sycojax.methods.gist import EVAL_SPLITS, gist_token_id, lora_bytes
from sycojax.methods.gist_lora.data import (
    Instruction,
    PromptIds,
    first_input_line,
    group_instructions,
    instruction_queries,
    pick_queries,
    prompt_ids,
    train_inputs_by_instruction,
    training_queries,
)
from sycojax.methods.gist_lora.eval import _completion_loss, _mean, _median, _metrics, pos_outputs_from_samples
from sycojax.methods.gist_lora.report import (
    DETAILS_FILE,
    add_to_eval_json,
    details_path,
    format_table,
    read_eval_json,
    write_details,
)
from sycojax.methods.gist_lora.spec import (
    NO_PATCH,
    RANKS,
    TEACHER,
    GistLoraError,
    LoraEvalSpec,
    check_ranks,
    condition_name,
    parse_ranks,
)
from sycojax.methods.gist_lora.teacher import TeacherData, _batched_generate, build_teacher
from sycojax.methods.gist_lora.trees import nested_init, slice_lora, train_lora
from sycojax.methods.shared import padding_id
from sycojax.models.tokenizer import chat_ids

# --------------------------------------------------------------------------- self-study inputs
# (with the run that asks for them: the tests replace `_sample_texts`, `build_teacher` and `train_lora` here)


SELF_STUDY_ASK = (
    "Here is an instruction for an assistant:\n\n{instruction}\n\nWrite one example of an input a user could "
    "give together with this instruction (a question, a text or data to work on). Reply with the input only."
)


def _sample_texts(params, cfg, tok, prompt: Sequence[int], n: int, *, seed: int, max_new_tokens: int,
                  sampling: Sampling) -> list[str]:
    """`n` sampled continuations of one prompt, decoded."""
    rows = _batched_generate(params, cfg, [prompt] * n, max_new_tokens=max_new_tokens, batch_size=n,
                             sampling=sampling, seed=seed)
    return [tok.decode(r, skip_special_tokens=True) for r in rows]


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
    pad = padding_id(cfg, tok)
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


__all__ = [
    "DETAILS_FILE", "NO_PATCH", "RANKS", "TEACHER", "GistLoraError", "Instruction", "LoraEvalSpec", "PromptIds",
    "TeacherData", "add_to_eval_json", "build_teacher", "check_ranks", "condition_name", "details_path",
    "evaluate_lora", "first_input_line", "format_table", "group_instructions", "nested_init", "parse_ranks",
    "pick_queries", "pos_outputs_from_samples", "prompt_ids", "read_eval_json", "self_study_inputs", "slice_lora",
    "train_inputs_by_instruction", "train_lora", "training_queries", "write_details",
]
