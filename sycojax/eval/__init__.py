"""Metrics and reports: token KL, perplexity, ROUGE-L, behaviour checks, curve plots."""

from sycojax.eval.behaviour import bullet_list, contains_phrase, is_all_caps, is_french, is_json, mentions_any
from sycojax.eval.metrics import gap_closed, mean_token_kl, perplexity, restricted_softmax_prob
from sycojax.eval.plots import plot_curves
from sycojax.eval.rouge import rouge_l, rouge_l_each

__all__ = [
    "bullet_list",
    "contains_phrase",
    "gap_closed",
    "is_all_caps",
    "is_french",
    "is_json",
    "mean_token_kl",
    "mentions_any",
    "perplexity",
    "plot_curves",
    "restricted_softmax_prob",
    "rouge_l",
    "rouge_l_each",
]
