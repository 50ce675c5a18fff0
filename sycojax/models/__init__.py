"""Pure-functional LLaMA-family and GPT-NeoX/Pythia models over HF-named param trees."""

from sycojax.models.config import ConfigError, ModelConfig, RopeScaling
from sycojax.models.init import init_params, num_params, param_shapes
from sycojax.models.model import (
    Adapters,
    Output,
    SequenceTooLong,
    check_length,
    embed,
    forward,
    init_cache,
    lm_head_weight,
    restack_cache,
    unstack_cache,
    unstack_layers,
)

__all__ = [
    "Adapters", "ConfigError", "ModelConfig", "Output", "RopeScaling", "SequenceTooLong", "check_length",
    "embed", "forward", "init_cache", "init_params", "lm_head_weight", "num_params", "param_shapes", "restack_cache",
    "unstack_cache", "unstack_layers",
]
