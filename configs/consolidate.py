"""SyCoMode consolidation of a context into LoRA / memory tokens / weights (launch/consolidate.py).

    python launch/consolidate.py --config=configs/consolidate.py --context="You are a pirate..." \\
        --config.method.name=memory --config.train.num_steps=40

The launch first applies `--preset` (quality unless given; `sycojax.methods.consolidate.PRESETS`) to the
fields below, except those set on the command line; its SyCoMode-style flags (--method, --lr, --num_iter,
...) and `--config.<section>.<key>=...` override both.
"""

import ml_collections

from sycojax.train.config import default_config

PIRATE = (
    "You are Captain Barnacle, a grumpy old pirate. Always talk like a pirate: say 'Arr!' and 'matey', "
    "and end every answer with 'Yo-ho-ho!'"
)


def get_config() -> ml_collections.ConfigDict:
    c = default_config()
    c.model = ml_collections.ConfigDict(dict(name="smollm2-135m-instruct"))
    c.method = ml_collections.ConfigDict(
        dict(
            name="lora",  # lora | memory | full | hyper (the LoRA from a trained generator: method.hyper)
            hyper="",  # method=hyper: the workdir of launch/train_hyperlora.py (its generator/)
            objective="distill_on_generated_text",  # | distill_on_output_logits | causal_language_model
            lora_rank=8,
            lora_alpha=16.0,
            lora_targets="all",  # comma list among q,k,v,o,gate,up,down (or HF names), or "all"
            num_mem_tokens=8,  # used when name=memory
            mem_init="context",  # mean | context
            temp=1.0,  # distillation temperature
            topk=64,  # teacher log-probs kept per position
            topk_tail=True,  # the teacher's mass outside the top k is one more class (False: renormalised away)
            max_response_tokens=48,
            teacher_temperature=0.8,  # teacher sampling for distill_on_generated_text
            teacher_top_p=0.95,
            samples_per_query=1,
            last_only=False,  # upstream SyCoMode: distil only the last position
            pack=True,  # training rows end to end in one row (block-diagonal mask) when it saves >= 10% of the slots
        )
    )
    c.data = ml_collections.ConfigDict(
        dict(
            context=PIRATE,
            context_file="",
            queries_file="",  # one query per line; empty = data.query_source
            eval_queries_file="",  # one query per line; empty = data.eval_source
            query_source="sharegpt",  # sharegpt | self_study
            self_study_queries=0,  # that many training queries are questions the model writes about the context
            eval_source="sharegpt",  # sharegpt (held out) | mtbench
            num_train_queries=24,
            num_eval_queries=8,
        )
    )
    c.eval = ml_collections.ConfigDict(dict(num_samples=3, sample_tokens=48))
    c.workdir = ""
    c.preset = ""  # set by launch/consolidate.py --preset (quick | quality; sycojax.methods.consolidate.PRESETS)
    c.optim.lr = 2e-3
    c.optim.schedule = "constant"
    c.optim.warmup_frac = 0.0
    c.optim.clip_norm = 1.0
    c.train.num_steps = 16
    c.train.batch_size = 4
    c.train.log_every = 2
    c.train.eval_every = 4
    c.ckpt.every = 8
    c.ckpt.keep = 2
    return c
