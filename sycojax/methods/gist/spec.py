"""What a gisting run trains (`GistSpec`, static: part of the compiled loss), the `<GIST>` id, its error."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from sycojax.adapters import LoraConfig
from sycojax.data import (
    PROMPT_FORMATS,
)
from sycojax.masks import GIST_CONDITIONS
from sycojax.methods.shared import lora_targets
from sycojax.models import ModelConfig

TRAIN_BASE = ("lora", "full")


EVAL_SPLITS = {"seen": "val_seen", "unseen": "val_unseen", "human": "val_human"}


class GistError(ValueError):
    """Bad input to a gisting run or its evaluation; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class GistSpec:
    """What a gisting run trains (static: part of the compiled loss)."""

    condition: str = "gist"  # gist | pos_control | neg_control
    num_gist_tokens: int = 1
    train_base: str = "lora"  # lora | full
    lora: LoraConfig = LoraConfig(rank=16, alpha=32.0, targets=("all",))
    fmt: str = "chatml"  # chatml | bare
    max_length: int = 256
    remat: bool | str = False  # forward(remat=...): False | True ("full") | "dots"

    def __post_init__(self):
        if self.condition not in GIST_CONDITIONS:
            raise GistError(f"unknown condition {self.condition!r}; choose one of {', '.join(GIST_CONDITIONS)}")
        if self.num_gist_tokens < 1:
            raise GistError(f"num_gist_tokens must be >= 1 (upstream: 1..10), got {self.num_gist_tokens}")
        if self.train_base not in TRAIN_BASE:
            raise GistError(f"unknown train_base {self.train_base!r}; choose one of {', '.join(TRAIN_BASE)}")
        if self.fmt not in PROMPT_FORMATS:
            raise GistError(f"unknown prompt format {self.fmt!r}; choose one of {', '.join(PROMPT_FORMATS)}")
        if self.max_length <= self.num_gist_tokens + 1:
            raise GistError(f"max_length={self.max_length} leaves no room for {self.num_gist_tokens} gist tokens")

    @property
    def name(self) -> str:
        """The condition's name in eval tables: `gist_<k>`, `pos_control`, `neg_control`."""
        return f"gist_{self.num_gist_tokens}" if self.condition == "gist" else self.condition

    @classmethod
    def from_config(cls, c: Mapping[str, Any]) -> GistSpec:
        """From a config (ConfigDict or the JSON dict saved with a checkpoint): its `method` and `data` sections."""
        m, d = c["method"], c["data"]
        targets = lora_targets(m["lora_targets"])
        return cls(
            condition=str(m["condition"]), num_gist_tokens=int(m["num_gist_tokens"]), train_base=str(m["train_base"]),
            lora=LoraConfig(rank=int(m["lora_rank"]), alpha=float(m["lora_alpha"]), targets=targets),
            fmt=str(d["fmt"]), max_length=int(d["max_length"]), remat=m.get("remat", False),
        )


def gist_token_id(cfg: ModelConfig, tokenizer: Any = None) -> int:
    """`<GIST>` = the first id past the model's vocabulary (`cfg.vocab_size`)."""
    if tokenizer is not None and len(tokenizer) > cfg.vocab_size:
        raise GistError(
            f"the tokenizer has {len(tokenizer)} tokens but the model only {cfg.vocab_size} embedding rows; "
            "gist ids must lie past both"
        )
    return cfg.vocab_size
