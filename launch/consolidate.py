"""Consolidate a context into LoRA, memory tokens or the weights themselves (SyCoMode).

    python launch/consolidate.py --context="You are a pirate..." --method=lora --num_iter=16
    python launch/consolidate.py --context_file=persona.txt --method=memory --num_mem_tokens=8 \\
        --queries_file=train.txt --eval_queries_file=eval.txt --workdir=checkpoints/pirate
    python launch/consolidate.py --context="..." --method=hyper --hyper=checkpoints/hyperlora  # one forward pass

Flags named like SyCoMode's override the config file (`--config=configs/consolidate.py`); every
other field is reachable as `--config.<section>.<key>=...`. Ends by printing where outputs went.
"""

import sys

import _common  # noqa: F401  (sys.path, offline HF)
from absl import app, flags

from sycojax.methods import consolidate
from sycojax.methods.hyperlora import HyperError
from sycojax.train import distributed
from sycojax.train.config import check_values, define_config_flag, override_keys, parse_flags

_CONFIG = define_config_flag("config", _common.config_path("consolidate.py"), "config file")
F = flags.FLAGS
flags.DEFINE_enum("preset", None, list(consolidate.PRESETS),
                  f"budget: quick (the demo's, ~2 min on 2 CPU cores) or quality (~15 min; default {consolidate.DEFAULT_PRESET})")
flags.DEFINE_string("model", None, "model name or path (default: smollm2-135m-instruct)")
flags.DEFINE_enum("method", None, ["lora", "memory", "full", "hyper"],
                  "what trains (hyper: nothing; a trained generator emits the LoRA, see --hyper)")
flags.DEFINE_string("hyper", None, "--method=hyper: the workdir of launch/train_hyperlora.py (its trained generator)")
flags.DEFINE_integer("num_mem_tokens", None, "memory tokens (SyCoMode: 0 = train the weights, i.e. --method=full)")
flags.DEFINE_string("objective", None, "distill_on_generated_text | distill_on_output_logits | causal_language_model")
flags.DEFINE_float("lr", None, "learning rate")
flags.DEFINE_integer("num_iter", None, "optimizer steps")
flags.DEFINE_float("temp", None, "distillation temperature")
flags.DEFINE_integer("lora_rank", None, "LoRA rank")
flags.DEFINE_string("context", None, "the context to consolidate")
flags.DEFINE_string("context_file", None, "file holding the context")
flags.DEFINE_string("queries_file", None, "training queries, one per line")
flags.DEFINE_string("eval_queries_file", None, "held-out queries, one per line")
flags.DEFINE_string("workdir", None, "output directory")
flags.DEFINE_bool("wandb", False, "log to Weights & Biases (offline mode unless WANDB_MODE says otherwise)")
flags.DEFINE_bool("resume", False, "continue the run in --workdir")
flags.DEFINE_bool("overwrite", False, "replace the run in --workdir")
distributed.define_flags()  # --coordinator_address / --num_processes / --process_id (multi-host)


# the config keys each SyCoMode-style flag sets (a flag given on the command line beats the preset)
FLAG_KEYS = {"num_iter": "train.num_steps", "lr": "optim.lr"}


def apply_flags(c, argv=None):
    """--preset first (sparing the keys the command line sets), then the SyCoMode-style flags."""
    argv = sys.argv if argv is None else argv
    keep = set(override_keys(argv[1:])) | {k for f, k in FLAG_KEYS.items() if getattr(F, f) is not None}
    if F.method is not None:  # per-method preset values follow the method the flags choose
        c.method.name = F.method
    elif F.num_mem_tokens is not None:
        c.method.name = "full" if F.num_mem_tokens == 0 else "memory"
    consolidate.apply_preset(c, F.preset or consolidate.DEFAULT_PRESET, keep=keep)

    def put(flag, section, key):
        v = getattr(F, flag)
        if v is not None:
            setattr(getattr(c, section) if section else c, key, v)

    put("model", "model", "name")
    put("method", "method", "name")
    put("objective", "method", "objective")
    put("lr", "optim", "lr")
    put("num_iter", "train", "num_steps")
    put("temp", "method", "temp")
    put("lora_rank", "method", "lora_rank")
    put("context", "data", "context")
    put("context_file", "data", "context_file")
    put("queries_file", "data", "queries_file")
    put("eval_queries_file", "data", "eval_queries_file")
    put("workdir", None, "workdir")
    put("hyper", "method", "hyper")
    if c.method.name == "hyper" and F.lora_rank is None:
        c.method.lora_rank = 0  # the generator's rank; --lora_rank=N checks the generator emits rank N
    if F.num_mem_tokens is not None:
        c.method.num_mem_tokens = F.num_mem_tokens
        if F.num_mem_tokens == 0:
            c.method.name = "full"
        elif F.method is None:
            c.method.name = "memory"
    if F.context_file and F.context is None:
        c.data.context = ""
    if F.wandb:
        c.logging.wandb = True
    return c


def main(argv):
    del argv
    _common.quiet_logs()
    distributed.maybe_initialize_from_flags()  # before any device is touched
    with _common.one_line_errors(HyperError):
        c = apply_flags(_CONFIG.value)
        check_values(c)  # before the model loads: --num_iter=0 or --lr=nan never start
        queries = (f"training queries from {c.data.queries_file}" if c.data.queries_file else
                   f"{c.data.num_train_queries} training queries ({c.data.self_study_queries} self-study)")
        if c.method.name == "hyper":
            print(f"hyper: the LoRA from the generator in {c.method.hyper}, no training; held-out queries as a "
                  f"--method=lora --preset={c.preset} run")
        else:
            print(f"preset: {c.preset} ({c.train.num_steps} steps x batch {c.train.batch_size}, {queries}, "
                  f"lr {c.optim.lr:g} {c.optim.schedule}); --preset=quick|quality picks another budget")
        report = consolidate.run(c, resume=F.resume, overwrite=F.overwrite)
    print()
    print(f"method={report['method']}  KL before {report['kl_before']:.4f} -> after {report['kl_after']:.4f} "
          f"nats/token  (gap closed {100 * report['gap_closed']:.1f}%)  steps={report['steps']}  "
          f"time {report['timings_s']['total']:.0f}s  peak RSS {report['peak_rss_mb']:.0f} MB")
    for i, s in enumerate(report["samples"], 1):
        print(f"\n[{i}] query: {s['query']}")
        print(f"    teacher (with context):   {s['teacher']!r}")
        print(f"    consolidated (no context): {s['student']!r}")
        print(f"    baseline (no context):     {s['baseline']!r}")
    out = report["outputs"]
    print()
    print(f"workdir: {out['workdir']}")
    print(f"report:  {out['report']}")
    print(f"adapter: {out['adapter']}" + (f"  (PEFT: {out['peft']})" if out["peft"] else ""))
    if out["kl_curve"]:
        print(f"plots:   {out['kl_curve']}" + (f", {out['loss_curve']}" if out["loss_curve"] else ""))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
