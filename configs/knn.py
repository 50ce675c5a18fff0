"""kNN memory layers distilled from SmolLM2-135M-Instruct (launch/distill_knn.py; upstream.md §5).

    python launch/distill_knn.py --config.workdir=checkpoints/knn --config.method.blocks=26,27

method: the FF of `blocks` replaced by each of `variants` (featural | associative | product_key), trained one
after the other on the same rows and scored with the original (`teacher`) and the FF-removed model (`ablated`);
top-`k` retrieval over `key_dim`-dim unit keys (d = 2 - 2 cos), a store of `capacity` entries per replaced
block: recombine neighbours with d < `merge_below`, insert when all d > `insert_above`, LRFU eviction;
`warm_batches` batches written before step 1 (117 × 8: one pass over the 936 training rows; with capacity
32,768 and 32 batches featural recovered 47.4% of the gap, with 131,072 and 117 it reached 55.6% by step 20;
docs/knn-memory.md). Upstream's thresholds are 2/3 and 1/3: on SmolLM2's block-26 FF inputs they merge samples as
far apart as cos 2/3 and the store stalls at ~9k entries with a worse FF fit (docs/knn-memory.md), so the default
is 0.2 / 0.1. product-key
`sub_keys`² trainable values (trained at `pk_value_gain`× the rate). `lookup_json`: the store bench
(launch/bench_knn_store.py) whose lookup cost at 10k / 100k / 1M entries the results copy. Loss: T² KL(teacher_T ‖ student_T) at `temperature` 2 + `ce_weight` CE on
the shifted next token. data: Wikipedia lead summaries and ShareGPT responses (`per_source` each), rows of
<= `max_tokens` tokens, the first `held_out` (after a seeded shuffle) held out. optim: Adam, lr 1e-4 (upstream's), constant: at 1e-3 the
featural query projection moves so fast that the keys already stored no longer match new queries and the KL
rises from its step-0 value (docs/knn-memory.md).
"""

import ml_collections

from sycojax.train.config import default_config


def get_config() -> ml_collections.ConfigDict:
    c = default_config()
    c.model = ml_collections.ConfigDict({"name": "smollm2-135m-instruct"})
    c.method = ml_collections.ConfigDict(
        {"blocks": "26,27", "variants": "featural,associative,product_key", "key_dim": 128, "k": 16,
         "capacity": 131072, "merge_below": 0.2, "insert_above": 0.1, "warm_batches": 117, "sub_keys": 128, "pk_value_gain": 10.0, "init_scale": 16.0, "temperature": 2.0,
         "ce_weight": 1.0, "lookup_json": "results/knn_store.json"}
    )
    c.data = ml_collections.ConfigDict(
        {"sources": "wikipedia,sharegpt", "per_source": 500, "held_out": 64, "max_tokens": 128, "seed": 0}
    )
    c.workdir = ""
    c.results_json = ""
    c.optim.lr = 1e-4
    c.optim.schedule = "constant"
    c.optim.weight_decay = 0.0
    c.optim.clip_norm = 1.0
    c.train.batch_size = 8
    c.train.num_steps = 120
    c.train.log_every = 10
    c.train.eval_every = 20
    c.ckpt.every = 20
    c.ckpt.keep = 2
    return c
