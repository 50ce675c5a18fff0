"""What a consolidation run trains and against which targets (`Spec`), and its error."""

from __future__ import annotations

import dataclasses

from sycojax.adapters import LoraConfig
from sycojax.infer.generate import Sampling

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


def spec_from_dict(d: dict) -> Spec:
    d = dict(d)
    lo = d.pop("lora")
    ts = d.pop("teacher_sampling")
    return Spec(lora=LoraConfig(lo["rank"], lo["alpha"], tuple(lo["targets"])), teacher_sampling=Sampling(**ts), **d)
