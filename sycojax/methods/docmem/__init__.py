"""Document memory with guidance (the fourth seed system): a key-selected module on one block's output.

`module.py`: the module's tree, document keys, negative keys, the forward `docmem_apply`. The loss
is `sycojax.objectives.guidance_loss`. Training, data and evaluation build on the per-block module
seam of `sycojax.models` (issue 21).
"""

from sycojax.methods.docmem.module import (
    KEY_ACTIVATIONS,
    NEGATIVE_KEYS,
    DocMemConfig,
    docmem_apply,
    document_keys,
    init_docmem,
    negative_keys,
    selection,
)

__all__ = [
    "KEY_ACTIVATIONS",
    "NEGATIVE_KEYS",
    "DocMemConfig",
    "docmem_apply",
    "document_keys",
    "init_docmem",
    "negative_keys",
    "selection",
]
