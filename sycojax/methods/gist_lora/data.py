"""Inputs: a record's teacher prompt (instruction + input) and student prompt (input only), the evaluated
instructions of a split, and the training queries of an instruction (train-split inputs first, self-study
ones after; never an evaluated input).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sycojax.data import PromptTooLongError, encode_gist_example
from sycojax.data.alpaca_plus import normalize_instruction
from sycojax.methods.gist_lora.spec import GistLoraError, LoraEvalSpec


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
