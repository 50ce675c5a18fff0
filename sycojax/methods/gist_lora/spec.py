"""How each instruction is consolidated (`LoraEvalSpec`: ranks, steps, lr, queries, teacher sampling), the
condition names (`lora_r<r>`, `lora_teacher`, `lora_r0`), rank parsing, and the error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from sycojax.adapters import LoraConfig
from sycojax.data import PROMPT_FORMATS
from sycojax.methods import sycomode as sm
from sycojax.methods.gist import GistError
from sycojax.train.config import default_config

RANKS = (2, 8, 16)


TEACHER = "lora_teacher"


NO_PATCH = "lora_r0"


BUCKET = 64  # row lengths are rounded up to a multiple of this: few compiled shapes across instructions


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
