"""SyCoMode: consolidate a context (system prompt, facts, document) into LoRA, memory tokens or weights.

Teacher = frozen base model WITH the context as its system turn; student = the model WITHOUT it (the
template's default system turn), plus the trainable tree. Training makes
`P(response | query; θ')  ≈  P(response | context, query; θ)`.

Where each part lives (the shape every method in `sycojax/methods/` follows):

    spec.py     `Spec` (what trains, against which targets; static under jit), `ConsolidationError`
    trees.py    the trainable tree per method (`lora` | `memory` | `full`), `split_trees` → (base, Adapters),
                `student_params` (LoRA merged, for serving)
    data.py     teacher / student prompts (`build_prompts`), the student rows `Targets`, memory-token splicing
    teacher.py  the teacher, once: replies (`teacher_responses`) and top-k / full targets (`teacher_targets`)
    loss.py     `make_loss_fn` for the shared loop (rows packed when that saves padding)
    eval.py     held-out KL(teacher‖student) (`mean_kl`), greedy side-by-side replies
    serve.py    serving a saved run: `load_consolidated`, `reply` (what launch/chat.py calls)

The run end to end (queries → teacher → `sycojax.train.train` → report) is `sycojax/methods/consolidate.py`
(launch/consolidate.py); the benchmark over many contexts `sycojax.methods.sycomode_bench`, SyCoMode's
three raw-text experiments `sycojax.methods.sycomode_experiments`.

Data flow (the teacher runs once; every training step reuses its targets):

1. `teacher_responses`: the teacher answers each training query (sampled) and each eval query
   (greedy). The context's K/V is computed once for the whole batch (`generate(prefix=...)`).
2. `teacher_targets`: one teacher forward over `[context prefix][query + response]`, again with the
   prefix computed once, keeps the top-k log-probs at every response position (Cartridges-style
   targets), aligned to the student's token positions; eval queries keep the full distribution.
3. `loss_fn`: student forward on `[student prompt + response]` (memory tokens after BOS when used)
   and `distill_topk_from_hidden` (the student's logits are computed in chunks, never all at once).
4. The shared loop `sycojax.train.train` runs the steps, checkpoints and metrics; `mean_kl` gives
   the per-token KL(teacher‖student) on the held-out queries' teacher responses.
"""

from __future__ import annotations

from sycojax.methods.sycomode.data import (
    Prompts,
    Targets,
    bucket_length,
    build_prompts,
    check_fits,
    context_lm_targets,
    response_rows,
    row_lengths,
    strip_memory,
    with_memory,
)
from sycojax.methods.sycomode.eval import mean_kl, side_by_side
from sycojax.methods.sycomode.loss import loop_packing, make_loss_fn, packing_plan, response_hidden
from sycojax.methods.sycomode.serve import Consolidated, load_consolidated, reply
from sycojax.methods.sycomode.spec import METHODS, OBJECTIVES, ConsolidationError, Spec, spec_from_dict
from sycojax.methods.sycomode.teacher import teacher_responses, teacher_targets
from sycojax.methods.sycomode.trees import init_trainable, split_trees, student_params, tree_bytes

__all__ = [
    "METHODS", "OBJECTIVES", "Consolidated", "ConsolidationError", "Prompts", "Spec", "Targets", "bucket_length",
    "build_prompts", "check_fits", "context_lm_targets", "init_trainable", "load_consolidated", "loop_packing",
    "make_loss_fn", "mean_kl", "packing_plan", "reply", "response_hidden", "response_rows", "row_lengths",
    "side_by_side", "spec_from_dict", "split_trees", "strip_memory", "student_params", "teacher_responses",
    "teacher_targets", "tree_bytes", "with_memory",
]
