"""Document memory with guidance (the fourth seed system): a key-selected module on one block's output.

`module.py`: the module's tree, document keys, negative keys, the forward `docmem_apply`, and `DocMemHook`,
the module as a block hook on the model's per-block seam (`sycojax.models.BlockModules`). The loss
is `sycojax.objectives.guidance_loss`; documents come from `sycojax.data.documents`.
`loss.py`: activations entering the hooked block cached once (`cache_hidden`), the guidance step on them.
`eval.py`: greedy decoding with the module (KV cache), recall (ROUGE-L F, exact tokens).
`run.py`: `train_run` (what `launch/train_docmem.py` calls). Not built yet: a gate whose cost does not grow
with the number of documents (product keys / sparse top-k) and the scaling curve.
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
