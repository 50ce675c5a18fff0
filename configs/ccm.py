"""Compressed Context Memory on SmolLM2-135M-Instruct, chit-chat dialogs (launch/train_ccm.py; upstream.md §3).

    python launch/train_ccm.py --config.workdir=checkpoints/ccm
    python launch/train_ccm.py --config.train.num_steps=20 --config.data.num_train=100   # a quick look
    python launch/train_ccm.py --config.method.attn_type=merge_recur --config.workdir=checkpoints/ccm_merge
    python launch/train_ccm.py --config.method.attn_type=full --config.workdir=checkpoints/ccm_full   # a reference

method: n_tok COMP tokens per turn (upstream: 1, 2, 4, 8); attn_type
  concat_recur  CCM-concat: every turn's n_tok COMP K/V are kept, memory grows n_tok entries per turn per layer;
  merge_recur   CCM-merge: each turn's `COMP×n` is followed by `SUM×n` (their own embedding rows), whose K/V in
                every layer are the running mean of the turns' COMP K/V, Mem(t) = (1-1/t) Mem(t-1) + COMP(t)/t:
                n_tok entries per layer whatever the number of turns (LLaMA-family models);
  gist          reference: the whole context compressed at once into one COMP group (re-read every turn);
  full          reference: no COMP token, the LoRA at every position on the uncompressed rows (the fine-tuned
                full-context model CCM's gap is measured against; launch/eval_ccm.py --full);
sink keeps BOS visible to every token (and its K/V in the memory); LoRA on q,k,v,o r=8 alpha=16 active only at
COMP/SUM positions (upstream; its dropout 0.05 is not applied). The checkpoint records attn_type; loading it as
the other type is refused.
data: chitchat conversations with >= 3 turns, split by conversation (seed), every turn t >= 2 a target;
turns clipped to max_turn_tokens; rows over max_len lose their oldest context turns, and a target whose
input + output alone do not fit is dropped and counted. Sized for 2 CPU cores: ~3-4 s per step of 8 rows
of <= 256 tokens when the machine is otherwise idle.
"""

import ml_collections

from sycojax.train.config import default_config


def get_config() -> ml_collections.ConfigDict:
    c = default_config()
    c.model = ml_collections.ConfigDict({"name": "smollm2-135m-instruct"})
    c.method = ml_collections.ConfigDict(
        {"n_tok": 2, "attn_type": "concat_recur", "sink": False, "lora_rank": 8, "lora_alpha": 16.0,
         "lora_targets": "q,k,v,o"}
    )
    c.data = ml_collections.ConfigDict(
        {"source": "chitchat", "seed": 0, "num_val": 40, "num_test": 200, "num_train": 400,
         "max_len": 256, "max_turn_tokens": 40, "sep_id": -1}  # sep_id: set from the tokenizer ("\n")
    )
    c.eval = ml_collections.ConfigDict({"num_rows": 48, "min_context_turns": 4})
    c.workdir = ""
    c.optim.lr = 1e-3
    c.optim.schedule = "cosine"
    c.optim.warmup_frac = 0.05
    c.optim.weight_decay = 0.0
    c.optim.clip_norm = 1.0
    c.train.batch_size = 8
    c.train.num_steps = 400
    c.train.log_every = 10
    c.train.eval_every = 100
    c.ckpt.every = 50
    c.ckpt.keep = 2
    return c
