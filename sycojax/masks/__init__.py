"""Attention masks as boolean (B, 1, T, S) arrays, built outside the model."""

from sycojax.masks.ccm import (
    CCM_ATTN_TYPES,
    CompFlags,
    ccm_mask,
    comp_flags,
    concat_recur_rule,
    groups_after,
    merge_recur_rule,
    segment_ids,
    sink_keys,
    skip_positions,
)
from sycojax.masks.core import causal, causal_padding, combine, padding, positions_from_valid
from sycojax.masks.gist import (
    GIST_CONDITIONS,
    at_or_after_first_gist,
    at_or_before_last_gist,
    gist_flags,
    gist_mask,
    gist_rule,
    reverse_cumsum,
)

__all__ = [
    "CCM_ATTN_TYPES",
    "GIST_CONDITIONS",
    "CompFlags",
    "at_or_after_first_gist",
    "at_or_before_last_gist",
    "causal",
    "causal_padding",
    "ccm_mask",
    "combine",
    "comp_flags",
    "concat_recur_rule",
    "gist_flags",
    "gist_mask",
    "gist_rule",
    "groups_after",
    "merge_recur_rule",
    "padding",
    "positions_from_valid",
    "reverse_cumsum",
    "segment_ids",
    "sink_keys",
    "skip_positions",
]
