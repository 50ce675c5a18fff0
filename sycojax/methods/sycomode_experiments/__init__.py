"""SyCoMode's three experiments (reference/upstream.md §1), on raw text, with the consolidation machinery.

Each experiment reports three numbers for a (context, question, answer):

    full context   base model on  [start] context ␣ question ␣answer
    no context     base model on  [start] question ␣answer
    consolidated   the context consolidated into LoRA / memory tokens / the weights (`--method`), then
                   the student on [start] (memory tokens) question ␣answer

1. Alphabet: context = a run of 4–25 consecutive letters ("c d e f"), no question, answer = the next
   letter ("g"); metric = P(answer) under a softmax restricted to the 26 letter tokens " a".." z"
   (`restricted_softmax_prob`), mean ± std over random runs (upstream: 100).
2. Facts: ("The Bohr tower is in Topeka.", "Where is the Bohr tower?", "Topeka") and upstream's two
   pants facts; metric = perplexity of the answer tokens, exp(−mean log p(answer_j | ...)).
3. JAXA: a short factual passage about JAXA (written for sycojax; upstream's JAXA.txt is a longer
   Wikipedia extract), "Which JAXA rocket replaced the M-V?" → "Epsilon"; answer perplexity.

Raw text, as upstream (no chat template), with two adaptations to a 135M model (measured on
SmolLM2-135M-Instruct, base model, full context / no context):
- `[start]` is `<|endoftext|>`, SmolLM2's document separator (`RawFormat.start`), not its BOS
  `<|im_start|>`, which opens a chat turn: P(" g" | "c d e f") = 0.97 after `<|endoftext|>`, 0.63 after
  `<|im_start|>`.
- The answer follows an " Answer:" cue (`RawFormat.cue`; upstream glued the answer to the question).
  Without it the model does not treat the next words as the answer even with the context in view
  (answer perplexity, " " vs " Answer:": Red 371 vs 45, Epsilon 1983 vs 373; Topeka is easy either way).
Experiment 1 has no question and no cue: the letter follows the run directly.

Consolidation (`consolidate_raw`) uses the same pieces as `sycojax.methods.consolidate`: teacher =
base model on `[start] context ␣probe`, student = `[start] (memory) probe`, top-k targets from the
teacher (once), `make_loss_fn`, the shared loop `sycojax.train.train`. What the student trains on
depends on `--objective`:

- `distill_on_generated_text` (default): the teacher samples continuations of probes and the student
  matches its distributions on them. Probes never contain the evaluation question: a few generic ones
  (`PROBES`: "", "Q:", "Note:", ...) plus, with `context_probes="sentence_prefix"`, prefixes of
  each sentence of the context cut every few words (`sentence_probes`), which the teacher completes
  by recalling the context (generic continuations alone mostly drift into unrelated text on a 135M model).
  Experiment 1 uses the empty probe only: continue the letter run from nothing, which is upstream's
  blank-input setting.
- `distill_on_output_logits`: the same with the teacher's greedy continuation of each probe.
- `causal_language_model`: next-token CE on the context text itself.

Where each part lives:

    data.py           the cases, `RawFormat`, raw teacher / student prompts, probes
    eval.py           `row_logits`, `letter_prob`, `answer_perplexity`
    consolidation.py  `spec_from_config`, the targets per objective, `consolidate_raw`
    run.py            the entry point `run_experiment`, the three experiments, `format_result`
"""

from __future__ import annotations

from sycojax.methods.sycomode_experiments.consolidation import (
    clm_targets,
    consolidate_raw,
    consolidation_targets,
    spec_from_config,
)
from sycojax.methods.sycomode_experiments.data import (
    ALPHABET,
    FACTS,
    JAXA_ANSWER,
    JAXA_PASSAGE,
    JAXA_QUESTION,
    PROBES,
    RawFormat,
    alphabet_case,
    encode,
    full_ids,
    plain_ids,
    probes_for,
    raw_prompts,
    sentence_probes,
)
from sycojax.methods.sycomode_experiments.eval import answer_perplexity, letter_ids, letter_prob, row_logits
from sycojax.methods.sycomode_experiments.run import (
    experiment1,
    experiment2,
    experiment3,
    format_result,
    qa_case,
    run_experiment,
)

__all__ = [
    "ALPHABET", "FACTS", "JAXA_ANSWER", "JAXA_PASSAGE", "JAXA_QUESTION", "PROBES", "RawFormat", "alphabet_case",
    "answer_perplexity", "clm_targets", "consolidate_raw", "consolidation_targets", "encode", "experiment1",
    "experiment2", "experiment3", "format_result", "full_ids", "letter_ids", "letter_prob", "plain_ids",
    "probes_for", "qa_case", "raw_prompts", "row_logits", "run_experiment", "sentence_probes", "spec_from_config",
]
