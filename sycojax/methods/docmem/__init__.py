"""Document memory with guidance (the fourth seed system): a key-selected module on one block's output.

`module.py`: the module's tree, document keys, negative keys, the forward `docmem_apply`, and `DocMemHook`,
the module as a block hook on the model's per-block seam (`sycojax.models.BlockModules`). The loss
is `sycojax.objectives.guidance_loss`; documents come from `sycojax.data.documents`. Training and
evaluation are not built yet.
"""

from sycojax.methods.docmem.module import (
    KEY_ACTIVATIONS,
    NEGATIVE_KEYS,
    DocMemConfig,
    DocMemHook,
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
    "DocMemHook",
    "docmem_apply",
    "document_keys",
    "init_docmem",
    "negative_keys",
    "selection",
]
