"""Consolidation objectives: pure, jittable losses on logits and hidden states (model-agnostic).

Every loss takes arrays (logits, hidden states, targets) plus per-position `weights` and returns
a scalar fp32 weighted mean (see `weighting`). None imports `sycojax.models`: a method runs the
forward passes and hands the results here. `OBJECTIVES` maps the `--objective` names to them.
The public functions are wrapped in `jax.jit` (flags such as `last_only` static), so an eager call
compiles once; inside a jitted training step they are inlined like any other function.
"""

from sycojax.objectives.distill import (
    distill_on_output_logits,
    distill_on_topk,
    distill_topk_from_hidden,
    teacher_topk,
    token_kl,
    topk_entropy,
)
from sycojax.objectives.guidance import GUIDANCE_FORMS, guidance_loss
from sycojax.objectives.hidden import cosine_similarity, distill_on_all_hidden_layers, distill_on_hidden_layer
from sycojax.objectives.language_model import causal_language_model, next_token_targets, row_nll, token_nll
from sycojax.objectives.registry import DEFAULT_OBJECTIVE, OBJECTIVES, get_objective, needs_hidden_states
from sycojax.objectives.weighting import last_only_weights, select_weights, weighted_mean

__all__ = [
    "DEFAULT_OBJECTIVE",
    "GUIDANCE_FORMS",
    "OBJECTIVES",
    "causal_language_model",
    "cosine_similarity",
    "distill_on_all_hidden_layers",
    "distill_on_hidden_layer",
    "distill_on_output_logits",
    "distill_on_topk",
    "distill_topk_from_hidden",
    "get_objective",
    "guidance_loss",
    "last_only_weights",
    "needs_hidden_states",
    "next_token_targets",
    "row_nll",
    "select_weights",
    "teacher_topk",
    "token_kl",
    "token_nll",
    "topk_entropy",
    "weighted_mean",
]
