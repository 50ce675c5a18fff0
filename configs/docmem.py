"""Document memory with guidance on SmolLM2-135M-Instruct (launch/train_docmem.py; upstream.md §4).

    python launch/train_docmem.py --config.workdir=checkpoints/docmem200 --config.data.num_documents=200 \
        --config.data.epochs=40      # 26 min on 2 CPU cores; 10 documents: --config.data.epochs=150
    python launch/eval_docmem.py --workdirs=checkpoints/docmem200

method: a key-gated MLP hooked on block `hook_block` (-1 = the last block, as upstream's layer 15 of
Pythia-1B); `gate` topk (ours: a bank of `memory_units` units of which each document's key selects its
`top_k`, so a token costs O(top_k) whatever the number of documents) or dense (upstream: all units, 32 there);
tanh | relu selection; document keys fixed rows of an orthogonal init, `key_dim` 0 = one per document
(orthogonal keys need key_dim >= documents). Guidance loss `paper` (CE_pos + alpha |tau - CE_neg|; the
`code` form CE_pos + alpha min((CE_neg - tau)^2, CE_pos) stops pushing CE_neg once CE_pos is small: 5.3
with tau 4.5 at 10 documents), tau 4.5, alpha 0.1, negative keys other | random | zero (not with topk, where
the zero key is the base model); CE_neg on `neg_positions` sampled positions per window (0 = all; last block
only). data: Wikipedia summaries (or --config.data.documents_file, {id, text} JSONL), 128-word windows,
stride 64, <= 10 per document; with the hook on the last block, training rows are `chunk`
(64) consecutive positions of one window (0 = whole padded windows), `train.batch_size` such rows.
optim: AdamW lr 3e-3 (upstream 1e-3 for 500 epochs; ~2x faster to memorise here), clip 5; `data.epochs` > 0
sets num_steps.
"""

import ml_collections

from sycojax.train.config import default_config


def get_config() -> ml_collections.ConfigDict:
    c = default_config()
    c.model = ml_collections.ConfigDict({"name": "smollm2-135m-instruct"})
    c.method = ml_collections.ConfigDict(
        {"hook_block": -1, "gate": "topk", "memory_units": 8192, "top_k": 128, "key_dim": 0, "key_activation": "tanh",
         "act": "gelu", "key_seed": 0, "guidance_form": "paper", "tau": 4.5, "alpha": 0.1, "negative_key": "other",
         "neg_positions": 8}
    )
    c.data = ml_collections.ConfigDict(
        {"documents_file": "", "num_documents": 10, "window_words": 128, "stride": 64, "max_windows": 10,
         "max_tokens": 192, "epochs": 0, "chunk": 64}
    )
    c.eval = ml_collections.ConfigDict({"prompt_words": 8, "new_tokens": 32})
    c.workdir = ""
    c.optim.lr = 3e-3
    c.optim.schedule = "constant"
    c.optim.weight_decay = 0.0
    c.optim.clip_norm = 5.0
    c.train.batch_size = 32
    c.train.num_steps = 300
    c.train.log_every = 10
    c.train.eval_every = 0
    c.ckpt.every = 100
    c.ckpt.keep = 2
    return c
