"""Compressed Context Memory (Kim et al., ICLR 2024): a conversation kept as COMP-token K/V memory.

`trees.py`  the COMP embeddings and the conditional LoRA (`CCMSpec`, `init_trainable`, `adapters`)
`data.py`   dialog rows `[BOS] c1 C×n SEP ... I(t) SEP O(t) EOS`, split by conversation
`loss.py`   the one-pass training loss under the concat_recur mask with skip positions
`memory.py` inference, recurrently: `CompressedMemory`, `update`, `score` (the same computation), `generate`
`run.py`    a training run (`train_run`), validation NLL, `load_ccm` (checks n_tok / attention type)
The mask itself is `sycojax.masks.ccm`.
"""

from sycojax.methods.ccm.data import Row, dialog_rows, split_conversations, to_arrays, turn_ids, without_comp
from sycojax.methods.ccm.loss import ccm_forward_logits, make_loss_fn, output_nll
from sycojax.methods.ccm.memory import CompressedMemory, generate, score, update
from sycojax.methods.ccm.trees import CCMSpec, adapters, comp_first_id, init_comp, init_trainable

__all__ = [
    "CCMSpec",
    "CompressedMemory",
    "Row",
    "adapters",
    "ccm_forward_logits",
    "comp_first_id",
    "dialog_rows",
    "generate",
    "init_comp",
    "init_trainable",
    "make_loss_fn",
    "output_nll",
    "score",
    "split_conversations",
    "to_arrays",
    "turn_ids",
    "update",
    "without_comp",
]
