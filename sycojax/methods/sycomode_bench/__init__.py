"""Consolidation benchmark: many contexts × {lora, memory, full}, the teacher run once per context.

What `launch/consolidate_bench.py` runs (settings in `configs/consolidate_bench.py`). For every context:

1. Queries. Training queries: the context's own written ones (facts, documents, identity) topped up
   with real ShareGPT first turns; held-out queries: the context's own written questions plus
   general ones (MT-Bench first turns and a few written here). The two sets never share a string.
2. Teacher, once (`teacher_data`): sampled replies to every training query (`samples_per_query`
   each) → top-k targets; greedy replies to every held-out query → full distributions (exact KL) and
   the teacher side of ROUGE-L and the behaviour check. The no-context baseline's greedy replies and
   `kl_before = KL(teacher ‖ base model without the context)` are computed once too.
3. Per method (`run_method`): the same targets (memory tokens spliced in by `with_memory`), the
   method's own lr / steps / sizes (identical for every context), the shared loop
   `sycojax.train.train`, held-out KL every `eval_every` steps, then greedy student replies.

Metrics per (context, method), all on the held-out queries:

    gap closed   = (KL_before − KL_after) / KL_before            (KL = mean per-token KL(teacher‖student))
    ROUGE-L      = rouge_l(student, teacher) vs rouge_l(baseline, teacher)   (greedy replies, × 100)
    behaviour    = pass rate of the context's check for teacher / student / baseline; the behaviour
                   transfers when the student closes at least half of the teacher−baseline gap:
                   (s − b) / (t − b) ≥ 0.5, counted only where t > b (else the context shows no
                   behaviour the check can see, and the verdict is None)
    prefill tokens saved per query = len(teacher prompt) − len(student prompt)   (mean)

`summarize` gives, per method, the median gap closed over contexts (the issue's targets: ≥ 0.85 for
LoRA, ≥ 0.5 for memory tokens) and how many contexts' behaviour transferred.

Where each part lives:

    checks.py    behaviour checks, `BenchContext`, `Query`, pass rates, `behaviour_transfer`
    contexts.py  the contexts by name (`default_contexts`), `select`
    queries.py   training / held-out queries per context (own, self-study, ShareGPT / MT-Bench + general)
    teacher.py   the teacher and the baseline once per context (`teacher_data` → `TeacherData`)
    method.py    one method on one context (`run_method`): the shared loop, KL, replies, metrics
    report.py    `summarize`, `merge_results`, `format_table`, `plot_kl`
    settings.py  `enable_compile_cache`, `apply_quick`, `apply_steps`
    run.py       the entry point `run_bench`: every selected context × method
"""

from __future__ import annotations

from sycojax.methods.sycomode import with_memory
from sycojax.methods.sycomode_bench.checks import (
    CHECKS,
    TRANSFER_MIN,
    BenchContext,
    Query,
    behaviour_transfer,
    json_like,
    pass_rate,
    phrase_any,
)
from sycojax.methods.sycomode_bench.contexts import (
    MTBENCH_SYSTEM,
    PIRATE,
    WIKI_TITLES,
    ZORVEX,
    context_text,
    default_contexts,
    mtbench_system,
    select,
    wiki_document,
)
from sycojax.methods.sycomode_bench.method import load_hyper, method_spec, run_method, train_config
from sycojax.methods.sycomode_bench.queries import (
    GENERAL_EVAL,
    MTBENCH_EVAL_IDS,
    general_eval_queries,
    queries_for,
    self_study_for,
    sharegpt_pool,
)
from sycojax.methods.sycomode_bench.report import TARGETS, format_table, merge_results, plot_kl, summarize
from sycojax.methods.sycomode_bench.run import run_bench
from sycojax.methods.sycomode_bench.settings import QUICK_CONTEXTS, apply_quick, apply_steps, enable_compile_cache
from sycojax.methods.sycomode_bench.teacher import TeacherData, teacher_data

__all__ = [
    "CHECKS", "GENERAL_EVAL", "MTBENCH_EVAL_IDS", "MTBENCH_SYSTEM", "PIRATE", "QUICK_CONTEXTS", "TARGETS",
    "TRANSFER_MIN", "WIKI_TITLES", "ZORVEX", "BenchContext", "Query", "TeacherData", "apply_quick", "apply_steps",
    "load_hyper",
    "behaviour_transfer", "context_text", "default_contexts", "enable_compile_cache", "format_table",
    "general_eval_queries", "json_like", "merge_results", "method_spec", "mtbench_system", "pass_rate", "phrase_any",
    "plot_kl", "queries_for", "run_bench", "run_method", "select", "self_study_for", "sharegpt_pool", "summarize",
    "teacher_data", "train_config", "wiki_document", "with_memory",
]
