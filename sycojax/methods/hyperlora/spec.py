"""The generator's shape (`HyperConfig`, static under jit) and the method's error class."""

from __future__ import annotations

import dataclasses

from sycojax.adapters.lora import ALL_LINEAR, LoraConfig
from sycojax.models.config import ModelConfig


class HyperError(ValueError):
    """A generator setting or checkpoint that cannot work here; the message names the fix."""


@dataclasses.dataclass(frozen=True)
class HyperConfig:
    """What the generator reads and what it emits.

    rank, alpha, targets: the LoRA it emits (`lora`: the same `LoraConfig` `init_lora` takes).
    read_layers: which `forward(..., return_hidden=True).hidden_states` entries the reader mean-pools
                 (0 = embeddings, L = the final normed stream); () = the quarter depths (`depths`).
    hidden:      width of the MLP between the pooled states and the coefficients.
    basis:       K, the size of each (layer, module)'s learned basis: `A = A₀ + a U`, `B = B₀ + V b`
                 with `U (K, in)`, `V (out, K)` shared by all contexts and `a (r, K)`, `b (K, r)` generated.
    max_context_tokens: the reader's window: a longer context is cut to its first this-many tokens (and the
                 caller says so: `data.reader_ids`).
    """

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = (ALL_LINEAR,)
    read_layers: tuple[int, ...] = ()
    hidden: int = 128
    basis: int = 8
    max_context_tokens: int = 512

    def __post_init__(self):
        for name in ("rank", "hidden", "basis", "max_context_tokens"):
            if getattr(self, name) < 1:
                raise HyperError(f"HyperConfig.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def lora(self) -> LoraConfig:
        return LoraConfig(rank=self.rank, alpha=self.alpha, targets=self.targets)

    def depths(self, cfg: ModelConfig) -> tuple[int, ...]:
        """The `hidden_states` indices the reader pools for `cfg` (checked against its depth)."""
        n = cfg.num_layers
        layers = self.read_layers or tuple(dict.fromkeys(max(1, round(n * j / 4)) for j in (1, 2, 3, 4)))
        bad = [i for i in layers if not 0 <= i <= n]
        if bad:
            raise HyperError(f"read_layers {bad}: the model has hidden states 0..{n} (0 = embeddings, "
                             f"{n} = the final normed stream)")
        return tuple(layers)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> HyperConfig:
        d = dict(d)
        return cls(**dict(d, targets=tuple(d.get("targets", (ALL_LINEAR,))),
                          read_layers=tuple(d.get("read_layers", ()))))
