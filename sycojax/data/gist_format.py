"""Gisting prompts -> token ids: k gist tokens after the instruction, labels only on the completion.

Two formats:

- `"bare"`, upstream Gisting's decoder-only format (`jayelm/gisting`, `DataCollatorForAlpacaCLM`)::

      Instruction: {instruction}\\n<GIST>×k\\nInput: {input}\\nOutput: {output}<eos>
      (without an input: "Instruction: {instruction}\\n<GIST>×k\\nOutput: {output}<eos>")

- `"chatml"`: the instruction and the gist tokens inside the user turn of the tokenizer's chat template::

      {template head}{instruction}<GIST>×k\\n{input}{end of user turn + assistant header}{output}{end of turn}

  e.g. for SmolLM2: `<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging
  Face<|im_end|>\\n<|im_start|>user\\n{instruction}<GIST>×k\\n{input}<|im_end|>\\n<|im_start|>assistant\\n`
  then `{output}<|im_end|>`. The pieces are read off the tokenizer's own template by rendering it around
  placeholder strings (`chat_pieces`), so the default system prompt is whatever the template adds when no
  system message is given (`system=None`); pass `system="..."` to set one. A tokenizer without a chat
  template gets plain ChatML without a system turn. The SmolLM2 instruct model answers this format far
  better than the bare one (which leaves many outputs empty before training).

Gist tokens are not text: the id `gist_id` (>= the tokenizer's vocabulary size; by the sycojax convention
extra trainable embeddings take ids V, V+1, ... and live in their own parameter tree) is spliced between
separately tokenised text pieces, k copies as upstream. Everything before the gist span is the part the gist
tokens must compress: under the gist mask, tokens after the gist span see only the gist tokens and what
follows them.

Batches are left-padded (`collate_gist_batch`): `labels[b, t] = tokens[b, t]` on completion tokens and
`IGNORE_INDEX` elsewhere (same alignment as `tokens`: the loss predicts `labels[:, 1:]` from
`logits[:, :-1]`), `valid` marks real tokens, `positions = max(cumsum(valid) - 1, 0)` (absolute positions,
equal to `sycojax.masks.positions_from_valid`), and `gist_start` / `gist_end` / `prompt_end` give, per row,
the gist span `[gist_start, gist_end)` and the first completion index in padded coordinates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from sycojax.data.sources import DataError, require_nonempty

IGNORE_INDEX = -100
PromptFormat = Literal["bare", "chatml"]
PROMPT_FORMATS: tuple[str, ...] = ("bare", "chatml")
GIST_TEXT = "<GIST>"

_USER = "\ue000USER\ue000"  # private-use placeholders to read a chat template's pieces
_ASSISTANT = "\ue000ASSISTANT\ue000"
_PLAIN_CHATML = ("<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n", "<|im_end|>")


class PromptTooLongError(DataError):
    """The prompt (instruction + gist tokens + input) does not fit in `max_length`."""


@dataclasses.dataclass(frozen=True)
class ChatPieces:
    """A chat template cut around the user and assistant contents: head + USER + mid + ASSISTANT + tail."""

    head: str
    mid: str
    tail: str


def chat_pieces(tokenizer: Any = None, system: str | None = None) -> ChatPieces:
    """Read `ChatPieces` off `tokenizer.chat_template` (plain ChatML when it has none).

    `tail` is the end-of-turn marker after the assistant's content with trailing whitespace removed
    (SmolLM2: "<|im_end|>"), so the completion ends with the end-of-turn token the model stops on.
    """
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        head, mid, tail = _PLAIN_CHATML
        if system is not None:
            head = f"<|im_start|>system\n{system}<|im_end|>\n" + head
        return ChatPieces(head, mid, tail)
    messages = [{"role": "system", "content": system}] if system is not None else []
    prompt = tokenizer.apply_chat_template(
        messages + [{"role": "user", "content": _USER}], tokenize=False, add_generation_prompt=True
    )
    full = tokenizer.apply_chat_template(
        messages + [{"role": "user", "content": _USER}, {"role": "assistant", "content": _ASSISTANT}], tokenize=False
    )
    if prompt.count(_USER) != 1 or full.count(_ASSISTANT) != 1:
        raise DataError("the tokenizer's chat template does not render the user/assistant contents verbatim")
    head, mid = prompt.split(_USER)
    before_assistant, tail = full.split(_ASSISTANT)
    if before_assistant != prompt:
        raise DataError(
            "the tokenizer's chat template renders the generation prompt differently from a finished turn; "
            "use fmt='bare' or give the tokenizer a ChatML template"
        )
    return ChatPieces(head, mid, tail.rstrip())


def gist_prompt_pieces(record: dict, fmt: PromptFormat, chat: ChatPieces | None = None) -> tuple[str, str, str | None]:
    """Text around the gist span: `(before_gist, after_gist, completion)`; completion None without output.

    In the "bare" format the completion is " " + output (the end-of-sequence id is appended when encoding);
    in "chatml" it is output + the end-of-turn marker.
    """
    instruction = record.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise DataError(f"record has no instruction: {str(record)[:200]}")
    inp = record.get("input") or ""
    output = record.get("output")
    if fmt == "bare":
        before = f"Instruction: {instruction}\n"
        after = f"\nInput: {inp}\nOutput:" if inp else "\nOutput:"
        completion = None if output is None else f" {output}"
    elif fmt == "chatml":
        chat = chat or chat_pieces()
        before = chat.head + instruction
        after = (f"\n{inp}" if inp else "") + chat.mid
        completion = None if output is None else output + chat.tail
    else:
        raise DataError(f"unknown prompt format {fmt!r}; use one of {PROMPT_FORMATS}")
    return before, after, completion


def render_gist_prompt(
    record: dict,
    *,
    num_gist_tokens: int,
    fmt: PromptFormat = "chatml",
    tokenizer: Any = None,
    system: str | None = None,
    with_completion: bool = False,
) -> str:
    """The prompt as readable text with `<GIST>` markers (for logs and docs; encoding does not use it)."""
    chat = chat_pieces(tokenizer, system) if fmt == "chatml" else None
    before, after, completion = gist_prompt_pieces(record, fmt, chat)
    text = before + GIST_TEXT * num_gist_tokens + after
    return text + (completion or "") if with_completion else text


@dataclasses.dataclass(frozen=True)
class GistExample:
    """One encoded example: `prefix + gist + suffix` is the prompt, `completion` what the loss is on."""

    prefix: tuple[int, ...]  # template head + instruction: what the gist tokens compress
    gist: tuple[int, ...]  # k copies of the gist id
    suffix: tuple[int, ...]  # input + whatever precedes the completion ("\nOutput:" / assistant header)
    completion: tuple[int, ...]  # output + end of sequence; () when encoded without a completion

    @property
    def prompt(self) -> tuple[int, ...]:
        return self.prefix + self.gist + self.suffix

    @property
    def tokens(self) -> tuple[int, ...]:
        return self.prompt + self.completion


def _ids(tokenizer: Any, text: str, add_special_tokens: bool) -> tuple[int, ...]:
    return tuple(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]) if text else ()


def encode_gist_example(
    record: dict,
    tokenizer: Any,
    *,
    gist_id: int,
    num_gist_tokens: int,
    fmt: PromptFormat = "chatml",
    system: str | None = None,
    with_completion: bool = True,
    max_length: int | None = None,
    chat: ChatPieces | None = None,
) -> GistExample:
    """Tokenise one record (see the module docstring for the formats).

    The first text piece is tokenised with the tokenizer's special tokens (a BOS if it adds one), the rest
    without. With `max_length`, a prompt that leaves no room for a completion token raises
    `PromptTooLongError`; a long completion is cut on the right (its end-of-sequence token may go).
    `chat` (from `chat_pieces`) saves re-rendering the template per record.
    """
    if num_gist_tokens < 0:
        raise DataError(f"num_gist_tokens must be >= 0, got {num_gist_tokens}")
    vocab = len(tokenizer)
    if gist_id < vocab:
        raise DataError(
            f"gist id {gist_id} is a real token of the tokenizer (vocabulary size {vocab}); by convention extra "
            f"trainable embeddings take ids >= {vocab} (V, V+1, ...)"
        )
    if fmt == "chatml" and chat is None:
        chat = chat_pieces(tokenizer, system)
    before, after, completion = gist_prompt_pieces(record, fmt, chat)
    prefix = _ids(tokenizer, before, add_special_tokens=True)
    suffix = _ids(tokenizer, after, add_special_tokens=False)
    gist = (gist_id,) * num_gist_tokens
    done: tuple[int, ...] = ()
    if with_completion:
        if completion is None:
            raise DataError(
                f"record {record.get('source', '')!r} has no output to train on; encode it with "
                "with_completion=False (prompt only, e.g. for generation)"
            )
        done = _ids(tokenizer, completion, add_special_tokens=False)
        if fmt == "bare":
            if tokenizer.eos_token_id is None:
                raise DataError("the tokenizer has no eos_token_id; the bare format ends completions with it")
            done += (tokenizer.eos_token_id,)
    example = GistExample(prefix, gist, suffix, done)
    if max_length is not None:
        n_prompt = len(example.prompt)
        room = max_length - n_prompt
        if room < (1 if with_completion else 0):
            raise PromptTooLongError(
                f"prompt of {n_prompt} tokens ({len(prefix)} before the gist span, {num_gist_tokens} gist, "
                f"{len(suffix)} after) leaves no room in max_length={max_length}; raise max_length, use fewer "
                "gist tokens, or drop long instructions (load_sharegpt_pairs(max_instruction_chars=...))"
            )
        if len(done) > room:
            example = dataclasses.replace(example, completion=done[:room])
    return example


def encode_gist_examples(
    records: Sequence[dict], tokenizer: Any, *, drop_too_long: bool = False, **kwargs
) -> list[GistExample]:
    """`encode_gist_example` over `records`; with `drop_too_long`, prompts that do not fit are skipped."""
    require_nonempty(records, "records to encode")
    if kwargs.get("fmt", "chatml") == "chatml" and kwargs.get("chat") is None:
        kwargs["chat"] = chat_pieces(tokenizer, kwargs.get("system"))
    out = []
    for r in records:
        try:
            out.append(encode_gist_example(r, tokenizer, **kwargs))
        except PromptTooLongError:
            if not drop_too_long:
                raise
    require_nonempty(out, "encoded examples", "every prompt was too long for max_length")
    return out


def collate_gist_batch(
    examples: Sequence[GistExample],
    *,
    pad_id: int,
    with_completion: bool = True,
    length: int | None = None,
) -> dict[str, np.ndarray]:
    """Left-pad examples into numpy arrays (see the module docstring for the fields).

    `length` pads to a fixed length (>= the longest row) so jitted steps see one shape; without it the
    batch is as long as its longest row. With `with_completion=False` only the prompts are batched (for
    generation): every row then ends at `prompt_end`.
    """
    require_nonempty(examples, "batch")
    rows = [ex.tokens if with_completion else ex.prompt for ex in examples]
    t = max(map(len, rows))
    if length is not None:
        if length < t:
            raise DataError(f"length={length} is shorter than the longest row ({t} tokens)")
        t = length
    b = len(rows)
    tokens = np.full((b, t), pad_id, np.int32)
    labels = np.full((b, t), IGNORE_INDEX, np.int32)
    valid = np.zeros((b, t), bool)
    gist_start = np.zeros(b, np.int32)
    gist_end = np.zeros(b, np.int32)
    prompt_end = np.zeros(b, np.int32)
    for i, (ex, row) in enumerate(zip(examples, rows)):
        pad = t - len(row)
        tokens[i, pad:] = row
        valid[i, pad:] = True
        gist_start[i] = pad + len(ex.prefix)
        gist_end[i] = gist_start[i] + len(ex.gist)
        prompt_end[i] = pad + len(ex.prompt)
        if with_completion:
            labels[i, prompt_end[i] :] = ex.completion
    positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0).astype(np.int32)
    return {
        "tokens": tokens,
        "labels": labels,
        "valid": valid,
        "positions": positions,
        "gist_start": gist_start,
        "gist_end": gist_end,
        "prompt_end": prompt_end,
    }
