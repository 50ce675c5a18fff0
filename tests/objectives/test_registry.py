import pytest

from sycojax.objectives import (
    DEFAULT_OBJECTIVE,
    OBJECTIVES,
    causal_language_model,
    distill_on_all_hidden_layers,
    distill_on_hidden_layer,
    distill_on_output_logits,
    get_objective,
    needs_hidden_states,
)


def test_registry_has_upstream_names():
    assert OBJECTIVES == {
        "causal_language_model": causal_language_model,
        "distill_on_output_logits": distill_on_output_logits,
        "distill_on_hidden_layer": distill_on_hidden_layer,
        "distill_on_all_hidden_layers": distill_on_all_hidden_layers,
        "distill_on_generated_text": distill_on_output_logits,
    }
    assert get_objective(DEFAULT_OBJECTIVE) is distill_on_output_logits


def test_unknown_objective_lists_valid_names():
    with pytest.raises(
        ValueError, match="unknown objective 'distill_on_logits'.*causal_language_model.*distill_on_generated_text"
    ):
        get_objective("distill_on_logits")
    with pytest.raises(ValueError, match="valid objectives"):
        needs_hidden_states("nope")


def test_needs_hidden_states():
    assert needs_hidden_states("distill_on_hidden_layer")
    assert needs_hidden_states("distill_on_all_hidden_layers")
    assert not needs_hidden_states("distill_on_generated_text")
    assert not needs_hidden_states("causal_language_model")
