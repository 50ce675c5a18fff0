"""Compressed Context Memory (Kim et al., ICLR 2024): a conversation kept as COMP-token K/V memory.

`trees.py`  the COMP (+ SUM for merge) embeddings and the conditional LoRA (`CCMSpec`, `init_trainable`,
            `group_ids`, `check_trees`, `adapters`)
`data.py`   dialog rows `[BOS] c1 C×n SEP ... I(t) SEP O(t) EOS` (merge: `c1 C×n S×n SEP`), split by conversation
`loss.py`   the one-pass training loss under the concat_recur / merge_recur mask with skip positions
`merge.py`  merge_recur's one-pass forward: each SUM token's K/V = running mean of the COMP K/V before it
`memory.py` inference, recurrently: `CompressedMemory`, `update` (concat: grows; merge: running mean, fixed
            size), `score` (the same computation), `generate`
`run.py`    a training run (`train_run`), validation NLL, `load_ccm` (checks n_tok / attention type)
`evaluate.py` per turn beside full / none / sliding / gist (`launch/eval_ccm.py`)
`stream.py` streaming perplexity at a fixed K/V budget: sliding, StreamingLLM, CCM (`launch/stream_ccm.py`);
`stream_run.py` its runs and CCM trained for streaming in one pass (`stream_layout`, `train_stream_run`)
The mask itself is `sycojax.masks.ccm`.
"""

from sycojax.methods.ccm.data import Row, dialog_rows, split_conversations, to_arrays, turn_ids, without_comp
from sycojax.methods.ccm.loss import ccm_forward_logits, make_loss_fn, output_nll
from sycojax.methods.ccm.memory import CompressedMemory, generate, score, update
from sycojax.methods.ccm.merge import forward_merge, running_mean_weights
from sycojax.methods.ccm.trees import (
    CCMSpec,
    adapters,
    check_trees,
    comp_first_id,
    group_ids,
    init_comp,
    init_trainable,
    sum_first_id,
)

__all__ = [
    "CCMSpec",
    "CompressedMemory",
    "Row",
    "adapters",
    "ccm_forward_logits",
    "check_trees",
    "comp_first_id",
    "dialog_rows",
    "forward_merge",
    "generate",
    "group_ids",
    "init_comp",
    "init_trainable",
    "make_loss_fn",
    "output_nll",
    "running_mean_weights",
    "score",
    "split_conversations",
    "sum_first_id",
    "to_arrays",
    "turn_ids",
    "update",
    "without_comp",
]
