"""HyperLoRA (issue 23): a network reads a context once and emits its LoRA, instead of minutes of optimisation.

The frozen base reads the context and its hidden states at a few depths are mean-pooled (`reader.py`,
`pool_context`); a small MLP turns them into coefficients over a learned basis per (layer, module), added to
a learned unconditional LoRA (`generator.py`: `init_generator`, `generate_lora`). The output is an
ordinary LoRA tree; a batch of contexts gives a per-row tree for `Adapters(lora_per_row=True)`, so one
training step covers many contexts. `spec.py`: `HyperConfig`, `HyperError`.

    data.py   real contexts, the shared query rows, the teacher once per context (top-k targets, KL_before, the
              reader's pooled states from the same forward), the KL filter and the split by context
    loss.py   generator -> per-row LoRA -> student forward without the context -> cached top-k KL
    run.py    `train_run`: data -> the shared loop -> test contexts -> results JSON + PNG (launch/train_hyperlora.py)
    eval.py   test contexts: hyper, the unconditional and wrong-context controls, the optimised LoRA
    use.py    the generator's files (checked against base model and rank), one context -> its LoRA, and
              `launch/consolidate.py --method=hyper --hyper=<workdir>`
"""

from sycojax.methods.hyperlora.generator import (
    as_adapters,
    generate_lora,
    init_generator,
    set_reader_norm,
    split_trained,
    unconditional_lora,
)
from sycojax.methods.hyperlora.reader import mean_pool, pool_context
from sycojax.methods.hyperlora.spec import HyperConfig, HyperError

__all__ = ["HyperConfig", "HyperError", "as_adapters", "generate_lora", "init_generator", "mean_pool", "pool_context",
           "set_reader_norm", "split_trained", "unconditional_lora"]
