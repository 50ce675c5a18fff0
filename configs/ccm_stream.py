"""CCM trained for streaming (launch/stream_ccm.py --train; sycojax/methods/ccm/stream.py, upstream.md §3).

    python launch/stream_ccm.py --train --config.workdir=checkpoints/ccm_stream      # train, then evaluate
    python launch/stream_ccm.py --train --config.train.num_steps=5 --config.data.num_docs=8   # a quick look

Rows are windows of `stream.train_chunks` chunks of long texts, unrolled by `stream_run.stream_layout` into one
sequence: each chunk's text followed by the COMP groups the streaming policy makes after it (budget 160 K/V
entries, oldest 64 raw tokens -> n_tok COMP entries, <= 8 memory entries, 1 sink), under a mask that lets every
element see exactly what the recurrent streaming evaluation shows it. The loss is on the text tokens that read
a non-empty compressed memory. Texts: the ShareGPT conversations the evaluation draws from (>= eval_doc_tokens
tokens), after skipping the first `data.skip` (the evaluation takes the first ones: keep skip > its num_docs and
any development set). `init_from`: a CCM workdir to start from, "" for a fresh init (the default: on 4
training windows the dialog run (checkpoints/ccm) starts at a higher loss, 1.976, than a fresh init, 1.949).
Sized for 2 CPU cores.
"""

import ml_collections

from sycojax.train.config import default_config


def get_config() -> ml_collections.ConfigDict:
    c = default_config()
    c.model = ml_collections.ConfigDict({"name": "smollm2-135m-instruct"})
    c.method = ml_collections.ConfigDict(
        {"n_tok": 2, "attn_type": "concat_recur", "sink": True, "lora_rank": 8, "lora_alpha": 16.0,
         "lora_targets": "q,k,v,o"}
    )
    c.stream = ml_collections.ConfigDict(
        {"budget": 160, "chunk": 64, "comp_size": 64, "max_comp": 8, "train_chunks": 7, "eval_doc_tokens": 1024}
    )
    c.data = ml_collections.ConfigDict({"source": "sharegpt", "skip": 300, "num_docs": 200, "windows_per_doc": 2})
    c.init_from = ""
    c.workdir = "checkpoints/ccm_stream"
    c.optim.lr = 2e-3
    c.optim.schedule = "cosine"
    c.optim.warmup_frac = 0.05
    c.optim.clip_norm = 1.0
    c.train.batch_size = 4
    c.train.num_steps = 56
    c.train.log_every = 5
    c.ckpt.every = 14
    c.ckpt.keep = 2
    return c
