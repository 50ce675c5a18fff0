"""Document memory with guidance (the fourth seed system): a key-selected module on one block's output.

`module.py`: the module's tree, document keys, negative keys, the forward `docmem_apply` (the dense gate of
upstream, or the topk gate: each key selects `top_k` units of a larger bank, so a token costs O(top_k) whatever
the number of documents), and `DocMemHook`, the module as a block hook on the model's per-block seam
(`sycojax.models.BlockModules`). The loss is `sycojax.objectives.guidance_loss`; documents come from
`sycojax.data.documents`.
`loss.py`: the hooked block's output cached once (`cache_after`), re-cut into chunked rows on the last block,
the guidance step on them.
`eval.py`: greedy decoding with the module (KV cache), recall (ROUGE-L F, exact tokens), a run's report, the
edit test, key interpolation, gate distances.
`run.py`: `train_run` (what `launch/train_docmem.py` calls) and `load_run` (what `launch/eval_docmem.py` reads).
"""

from sycojax.methods.docmem.module import (
    KEY_ACTIVATIONS,
    NEGATIVE_KEYS,
    DocMemConfig,
    DocMemHook,
    check_key_dim,
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
    "check_key_dim",
    "docmem_apply",
    "document_keys",
    "init_docmem",
    "negative_keys",
    "selection",
]
