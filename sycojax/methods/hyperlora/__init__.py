"""HyperLoRA (issue 23): a network reads a context once and emits its LoRA, instead of minutes of optimisation.

The frozen base reads the context and its hidden states at a few depths are mean-pooled (`reader.py`,
`pool_context`); a small MLP turns them into coefficients over a learned basis per (layer, module), added to
a learned unconditional LoRA (`generator.py`: `init_generator`, `generate_lora`). The output is an
ordinary LoRA tree; a batch of contexts gives a per-row tree for `Adapters(lora_per_row=True)`, so one
training step covers many contexts. `spec.py`: `HyperConfig`, `HyperError`.
Not built yet: the training (cached-teacher KL over many contexts), the launch, the evaluation and bench.
"""

from sycojax.methods.hyperlora.generator import as_adapters, generate_lora, init_generator, unconditional_lora
from sycojax.methods.hyperlora.reader import pool_context
from sycojax.methods.hyperlora.spec import HyperConfig, HyperError

__all__ = ["HyperConfig", "HyperError", "as_adapters", "generate_lora", "init_generator", "pool_context",
           "unconditional_lora"]
