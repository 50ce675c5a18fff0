"""Objectives by name (the values of `--objective`), as upstream SyCoMode names them.

| name | function | what the method feeds it |
|---|---|---|
| `causal_language_model` | `causal_language_model` | student logits on the context text + targets |
| `distill_on_output_logits` | `distill_on_output_logits` | student and teacher logits, aligned |
| `distill_on_hidden_layer` | `distill_on_hidden_layer` | final hidden states |
| `distill_on_all_hidden_layers` | `distill_on_all_hidden_layers` | all L+1 hidden states |
| `distill_on_generated_text` | `distill_on_output_logits` | logits on teacher-generated text (below) |

`distill_on_generated_text` is a composition done by the method, not a different loss: the
teacher (base model WITH the context) samples continuations of the training queries once; the
student (WITHOUT the context) is then run on query + continuation and trained with
`distill_on_output_logits` (or its top-k variants `distill_on_topk` /
`distill_topk_from_hidden` with targets from `teacher_topk`) on every position of the
continuation. It is the default because it matches the teacher's whole distribution on the
kind of text the student will produce — full responses to realistic queries — rather than at
one position or on the context text itself.
"""

from __future__ import annotations

from collections.abc import Callable

from sycojax.objectives.distill import distill_on_output_logits
from sycojax.objectives.hidden import distill_on_all_hidden_layers, distill_on_hidden_layer
from sycojax.objectives.language_model import causal_language_model

OBJECTIVES: dict[str, Callable] = {
    "causal_language_model": causal_language_model,
    "distill_on_output_logits": distill_on_output_logits,
    "distill_on_hidden_layer": distill_on_hidden_layer,
    "distill_on_all_hidden_layers": distill_on_all_hidden_layers,
    "distill_on_generated_text": distill_on_output_logits,
}

DEFAULT_OBJECTIVE = "distill_on_generated_text"

_HIDDEN_STATE_OBJECTIVES = frozenset({"distill_on_hidden_layer", "distill_on_all_hidden_layers"})


def _check(name: str) -> None:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; valid objectives: {', '.join(sorted(OBJECTIVES))}")


def get_objective(name: str) -> Callable:
    """The loss function registered under `name`; a ValueError listing the valid names otherwise."""
    _check(name)
    return OBJECTIVES[name]


def needs_hidden_states(name: str) -> bool:
    """Whether the objective consumes hidden states (the forward must run with `return_hidden=True`)."""
    _check(name)
    return name in _HIDDEN_STATE_OBJECTIVES
