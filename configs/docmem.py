"""Document memory with guidance on SmolLM2-135M-Instruct (launch/train_docmem.py; upstream.md §4).

    python launch/train_docmem.py --config.workdir=checkpoints/docmem --config.data.num_documents=10

method: a key-gated MLP (`memory_units`, `key_dim`, tanh | relu selection) hooked on block `hook_block`
(-1 = the last block, as upstream's layer 15 of Pythia-1B); document keys fixed rows of an orthogonal init;
guidance loss `code` (CE_pos + alpha min((CE_neg - tau)^2, CE_pos)) or `paper`, tau 4.5, alpha 0.1, negative
keys other | random | zero. data: Wikipedia summaries (or --config.data.documents_file, {id, text} JSONL),
128-word windows, stride 64, <= 10 per document. optim as upstream: AdamW lr 1e-3, clip 5.
"""

import ml_collections

from sycojax.train.config import default_config


def get_config() -> ml_collections.ConfigDict:
    c = default_config()
    c.model = ml_collections.ConfigDict({"name": "smollm2-135m-instruct"})
    c.method = ml_collections.ConfigDict(
        {"hook_block": -1, "memory_units": 32, "key_dim": 2, "key_activation": "tanh", "act": "gelu",
         "key_seed": 0, "guidance_form": "code", "tau": 4.5, "alpha": 0.1, "negative_key": "other"}
    )
    c.data = ml_collections.ConfigDict(
        {"documents_file": "", "num_documents": 10, "window_words": 128, "stride": 64, "max_windows": 10,
         "max_tokens": 192}
    )
    c.eval = ml_collections.ConfigDict({"prompt_words": 8, "new_tokens": 32})
    c.workdir = ""
    c.optim.lr = 1e-3
    c.optim.schedule = "constant"
    c.optim.weight_decay = 0.0
    c.optim.clip_norm = 5.0
    c.train.batch_size = 16
    c.train.num_steps = 300
    c.train.log_every = 10
    c.train.eval_every = 0
    c.ckpt.every = 100
    c.ckpt.keep = 2
    return c
