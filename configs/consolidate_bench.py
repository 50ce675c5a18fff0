"""The consolidation benchmark (launch/consolidate_bench.py): contexts × {lora, memory, full} on SmolLM2.

    python launch/consolidate_bench.py                       # everything, writes results/consolidate_bench.json
    python launch/consolidate_bench.py --contexts=pirate,facts --methods=lora --steps=24
    python launch/consolidate_bench.py --quick               # smoke test: tiny settings, outputs under /tmp

Every method uses the same settings for every context (recorded in the JSON). Fields:

bench.contexts / bench.methods: "all" or comma lists (names in `sycojax.methods.sycomode_bench`).
bench.num_train_queries × bench.samples_per_query = training replies per context (teacher sampled at
bench.teacher_temperature / teacher_top_p); bench.num_eval_queries held-out queries (teacher greedy). bench.self_study_queries: for the knowledge contexts
(facts, document, system-prompt identity), that many of the training queries are questions the model itself
writes about the context (self-study), after the context's own and before ShareGPT's.
bench.max_response_tokens: length of every reply (teacher, student, baseline). bench.topk: teacher
log-probs kept per training position; bench.topk_tail: keep the teacher's remaining mass as one more class
(False: renormalise over the top k, the first session's loss, which plateaus); bench.temperature:
distillation temperature.
bench.gen_batch: rows per generation call (one compiled program per context); bench.target_batch:
rows per teacher-target forward. bench.compile_cache: persistent XLA cache ("" = off). bench.pack: sequence
packing of the training rows (`sycomode.loop_packing`; the same loss, less padding).
methods.<m>.lr / steps (+ sizes): the per-method hyper-parameters; the loop's batch size is train.batch_size.
methods.hyper.hyper: the `hyper` row (`--methods=hyper`, not in the default list) takes the LoRA that this trained
generator emits in one forward pass; alone, it skips the training replies and self-study questions.

Tuning that chose them. First session (CPU; pirate and facts contexts, 8 queries × 2 replies, constant lr,
20 steps, KL gap closed at steps 4/8/12/16/20): LoRA lr 2e-3 pirate 72/74/74/73/72 %, facts 34/48/49/53/57 %;
memory (16 tokens) lr 3e-2 pirate 49/58/78/81/81 %, facts 7/12/17/23/27 %; full lr 3e-5 pirate 67/77/80/80/80 %.
Hence a cosine decay (no late overfitting) and a larger memory lr. Third session (all 8 contexts, tail-mass loss,
on an H100; results/archive/consolidate_bench_{16steps,64steps,128steps}.json), median gap closed LoRA / memory / full:
12 queries × 2, 32-token replies, 16 steps 45 / 45 / 42 %; 32 × 2, 64 tokens, 64 steps 64 / 67 / 54 %;
64 × 2, 64 tokens, 128 steps (batch 4, LoRA lr 2e-3) 68 / 76 / 58 %; the same with LoRA lr 1e-3: LoRA 71 %
(results/archive/consolidate_bench_lora_lr1e-3.json). Sixth/seventh sessions (these defaults: 256 queries × 2,
batch 16, 256 steps, LoRA lr 1e-3, 128 self-study questions; results/consolidate_bench.json): 87 / 86 / 79 %;
without self-study (results/archive/consolidate_bench_no_self_study.json) the document / facts LoRA gaps fall from
59 / 90 % to 50 / 83 %. More data and steps help every method; longer replies let the sign-off and format
contexts show at all. On 2 CPU cores the defaults take hours (the first session's 16-step, 32-token settings
took 40 min for 4 contexts there); `--quick` is the smoke test, and `--contexts` + `--merge` split a run.
"""

import ml_collections

from sycojax.train.config import default_config


def get_config() -> ml_collections.ConfigDict:
    c = default_config()
    c.model = ml_collections.ConfigDict(dict(name="smollm2-135m-instruct"))
    c.bench = ml_collections.ConfigDict(
        dict(
            contexts="pirate,json,french,signoff,caps,facts,document,mtbench_system",  # "all" adds bullets
            methods="lora,memory,full",
            num_train_queries=256,
            samples_per_query=2,
            self_study_queries=128,  # per knowledge context (facts, document, identity): questions the model writes
            num_eval_queries=8,
            max_response_tokens=64,
            teacher_temperature=0.8,
            teacher_top_p=0.95,
            temperature=1.0,
            topk=64,
            topk_tail=True,  # the teacher's mass outside the top k is one more class (objectives.distill)
            gen_batch=128,
            target_batch=16,
            num_samples=2,  # side-by-side samples kept per (context, method) in the JSON
            scratch_dir="",  # where each run's temporary workdir goes ("" = the system temp dir)
            compile_cache="checkpoints/cache/xla",
            pack=True,  # each device's micro-batch rows end to end in one row when that saves >= 10% (same loss)
        )
    )
    c.methods = ml_collections.ConfigDict(
        dict(
            lora=dict(lr=1e-3, steps=256, lora_rank=8, lora_alpha=16.0, lora_targets="all"),
            memory=dict(lr=5e-2, steps=256, num_mem_tokens=16, mem_init="context"),
            full=dict(lr=5e-5, steps=256),
            # not trained: the LoRA a trained generator emits (launch/train_hyperlora.py's workdir); lr/steps unused
            hyper=dict(lr=0.0, steps=0, hyper="checkpoints/hyperlora"),
        )
    )
    c.optim.schedule = "cosine"  # to 0 at the last step: constant lr 2e-3 LoRA overfit after ~10 steps (tuning)
    c.optim.warmup_frac = 0.0
    c.optim.clip_norm = 1.0
    c.train.batch_size = 16
    c.train.eval_every = 64
    c.train.log_every = 4
    c.ckpt.every = 0  # only the final step; the run's workdir is deleted after the metrics are taken
    c.ckpt.keep = 1
    c.logging.tensorboard = False
    c.logging.progress_bar = False
    return c
