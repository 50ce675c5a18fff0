"""Pure-functional LLaMA-family and GPT-NeoX/Pythia models over HF-named param trees."""

from sycojax.models.config import ConfigError, ModelConfig, RopeScaling
from sycojax.models.init import init_params, num_params, param_shapes
from sycojax.models.model import (
    Adapters,
    BaseFFN,
    Output,
    SequenceTooLong,
    base_ffn,
    block_mlp,
    check_length,
    embed,
    final_norm,
    forward,
    hidden_at,
    init_cache,
    lm_head_weight,
    lm_logits,
    restack_cache,
    unstack_cache,
    unstack_layers,
)
from sycojax.models.modules import BlockModules, Module

__all__ = [
    "Adapters", "BaseFFN", "BlockModules", "ConfigError", "ModelConfig", "Module", "Output", "RopeScaling",
    "SequenceTooLong", "base_ffn", "block_mlp", "check_length", "embed", "final_norm", "forward", "hidden_at",
    "init_cache", "init_params", "lm_head_weight", "lm_logits", "num_params", "param_shapes", "restack_cache",
    "unstack_cache", "unstack_layers",
]
