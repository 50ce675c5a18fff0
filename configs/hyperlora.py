"""HyperLoRA (issue 23): a generator reads a context once and emits its LoRA (launch/train_hyperlora.py).

    python launch/train_hyperlora.py --config.workdir=checkpoints/hyperlora \\
        --config.results_json=results/hyperlora_eval.json --config.results_png=results/hyperlora_gap_closed.png

hyper: the generator (`HyperConfig`): the LoRA it emits (rank, alpha, targets), the reader's depths (read_layers,
  "" = the quarter depths), the MLP width (hidden), the size of each (layer, module)'s learned basis (basis), the
  reader's window (max_context_tokens: a longer context is cut to its first that-many tokens, and said).
method: the consolidation's objective on the cached teacher: top-`topk` log-probs with the rest of the vocabulary
  as one more class (`tail`), at `temperature`.
data: candidate contexts per kind (`counts`: MT-Bench system prompts, ShareGPT personas / rules / instructions,
  Wikipedia facts), each 1..`max_context_tokens` tokens and >= `min_chars` characters; a shared pool of
  `pool_queries` real ShareGPT queries (<= `query_max_chars` characters) with the base model's own greedy replies
  of `response_tokens` tokens (generated once, no context); each context gets one pool row (seeded), its teacher
  targets and the reader's pooled states from one forward (`teacher_batch` contexts per batch). Kept: contexts
  whose KL_before >= `min_kl` on that row; split by context (seed): `n_test` test, `n_val` validation, the rest
  train. `eval_queries` further ShareGPT queries, disjoint from the pool, are the test contexts' held-out queries.
eval: test rows are the teacher's greedy replies (`max_response_tokens`) to those queries; `optimised`: the preset
  of `launch/consolidate.py --method=lora` run on every test context ("" skips it; `optimised_limit` > 0: only
  the first that many).
Sized for 2 shared CPU cores: about 1,300 candidates, 120 steps of 16 contexts.
"""

import ml_collections

from sycojax.train.config import default_config


def get_config() -> ml_collections.ConfigDict:
    c = default_config()
    c.model = ml_collections.ConfigDict({"name": "smollm2-135m-instruct"})
    c.hyper = ml_collections.ConfigDict({"rank": 8, "alpha": 16.0, "targets": "all", "read_layers": "", "hidden": 128,
                                         "basis": 8, "max_context_tokens": 512})
    c.method = ml_collections.ConfigDict({"topk": 64, "temperature": 1.0, "tail": True})
    c.data = ml_collections.ConfigDict(
        {"counts": {"system": 100, "persona": 300, "rules": 420, "instruction": 300, "facts": 300},
         "max_context_tokens": 128, "min_chars": 40, "pool_queries": 48, "query_max_chars": 80,
         "response_tokens": 24, "eval_queries": 8, "teacher_batch": 16, "min_kl": 0.05, "n_test": 12, "n_val": 32,
         "seed": 0, "pool": [], "test": []}  # pool / test: given queries (tests); [] = ShareGPT
    )
    c.eval = ml_collections.ConfigDict({"max_response_tokens": 48, "optimised": "quick", "optimised_limit": 0})
    c.workdir = ""
    c.results_json = ""
    c.results_png = ""
    c.optim.lr = 5e-4  # 2e-3: the validation contexts' mean KL rose for 50 steps (grad norm clipped at 1 throughout)
    c.optim.schedule = "cosine"
    c.optim.warmup_frac = 0.1
    c.optim.clip_norm = 1.0
    c.train.batch_size = 16
    c.train.num_steps = 120
    c.train.log_every = 5
    c.train.eval_every = 25
    c.ckpt.every = 25
    c.ckpt.keep = 2
    return c
