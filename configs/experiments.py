"""SyCoMode's three experiments (launch/experiments.py): alphabet, facts, JAXA — on SmolLM2, raw text.

    python launch/experiments.py --experiment=1 --runs=16 --json
    python launch/experiments.py --experiment=2 --method=memory --config.method.lr=3e-2
    python launch/experiments.py --experiment=3 --objective=causal_language_model

method.*: what trains and how the targets are made (see sycojax/methods/sycomode_experiments/).
method.lr is the learning rate of method.name; lr_by_method gives each method's default (used when
--lr is not given). probes: the generic prompts the teacher continues ("|"-separated; "" = no probe).
"""

import ml_collections

from sycojax.methods.sycomode_experiments import PROBES
from sycojax.train.config import default_config


def get_config() -> ml_collections.ConfigDict:
    c = default_config()
    c.model = ml_collections.ConfigDict(dict(name="smollm2-135m-instruct"))
    c.method = ml_collections.ConfigDict(
        dict(
            name="lora",  # lora | memory | full
            objective="distill_on_generated_text",  # | distill_on_output_logits | causal_language_model
            lora_rank=8,
            lora_alpha=16.0,
            num_mem_tokens=8,
            mem_init="context",
            temp=1.0,
            topk=64,
            topk_tail=True,  # the teacher's mass outside the top k is one more class (objectives.distill)
            max_response_tokens=24,  # teacher continuation length (experiments 2 and 3)
            alphabet_response_tokens=8,  # experiment 1: " g h i j ..."
            alphabet_samples=8,  # experiment 1: teacher continuations of the run (one empty probe)
            teacher_temperature=0.7,
            teacher_top_p=0.95,
            samples_per_query=2,  # continuations per probe (experiments 2 and 3)
            lr_by_method=dict(lora=1e-3, memory=3e-2, full=3e-5),
            pack=True,  # each device's micro-batch rows end to end in one row when that saves >= 10% (same loss)
        )
    )
    c.probes = "|".join(PROBES)
    c.context_probes = "sentence_prefix"  # | none: also probe with the first half of each context sentence
    c.raw_start = "<|endoftext|>"  # first token of every raw-text row ("" = the model's BOS)
    c.answer_cue = " Answer:"  # between question and answer (experiments 2 and 3)
    c.runs = 16  # experiment 1: random alphabet runs (upstream 100; CPU time)
    c.optim.schedule = "constant"
    c.optim.warmup_frac = 0.0
    c.optim.clip_norm = 1.0
    c.optim.lr = -1.0  # < 0: method.lr_by_method[method.name]
    c.train.num_steps = 16
    c.train.batch_size = 8
    c.train.log_every = 4
    c.train.eval_every = 0
    c.ckpt.every = 0
    c.ckpt.keep = 1
    c.logging.tensorboard = False
    c.logging.progress_bar = False
    return c
