"""Evaluate gisting runs like the paper: greedy outputs, ROUGE-L, held-out loss, gist-cache efficiency.

    python launch/eval_gist.py --workdir=checkpoints/gist/eval \\
        --pos_workdir=checkpoints/gist/pos --gist_workdir=checkpoints/gist/gist_k1 \\
        --gist_workdir=checkpoints/gist/gist_k5 --neg_workdir=checkpoints/gist/neg --num_examples=100
    python launch/eval_gist.py --workdir=checkpoints/gist/gist_k1      # one run, evaluated in place

Writes `<workdir>/eval.json` = {split: {condition: {"rougeL", "rougeL_vs_pos", "n", "n_ref", "loss"}}} with
splits seen / unseen / human and conditions pos_control, gist_<k>, neg_control; `eval_efficiency.json`
(compression ratio, KV bytes vs LoRA bytes, FLOPs and wall-clock with / without the gist cache, measured in
this run) and `eval_samples.json`; prints the tables.
"""

import _common  # noqa: F401  (sys.path, offline HF)
from absl import app, flags

from sycojax.data import DataError
from sycojax.methods import gist
from sycojax.train.inspection import NotACheckpointError

flags.DEFINE_string("workdir", None, "where eval.json goes; evaluated itself when no run flag is given", required=True)
flags.DEFINE_multi_string("gist_workdir", [], "a gist run (repeat for several k)")
flags.DEFINE_string("pos_workdir", None, "the pos_control run")
flags.DEFINE_string("neg_workdir", None, "the neg_control run")
flags.DEFINE_integer("num_gist_tokens", None, "expected k of the gist runs (a run trained with another k is an error)")
flags.DEFINE_list("splits", ["seen", "unseen", "human"], "splits to evaluate")
flags.DEFINE_integer("num_examples", 100, "examples per split (the first ones that fit --max_length)")
flags.DEFINE_integer("max_new_tokens", 128, "greedy tokens per output")
flags.DEFINE_integer("batch_size", 8, "decoding batch size")
flags.DEFINE_integer("max_length", None, "prompt token budget (default: the first run's data.max_length)")
flags.DEFINE_bool("efficiency", True, "measure the gist cache (FLOPs, wall-clock, KV bytes)")
flags.DEFINE_string("efficiency_split", "human", "split whose prompts the efficiency measurement uses")
flags.DEFINE_integer("timing_repeats", 3, "timed repetitions (after one compile run)")
F = flags.FLAGS


def load_runs() -> list:
    runs = []
    if F.pos_workdir:
        runs.append(gist.load_run(F.pos_workdir, condition="pos_control"))
    for w in F.gist_workdir:
        runs.append(gist.load_run(w, condition="gist", num_gist_tokens=F.num_gist_tokens))
    if F.neg_workdir:
        runs.append(gist.load_run(F.neg_workdir, condition="neg_control"))
    if not runs:
        run = gist.load_run(F.workdir)
        if run.spec.condition == "gist" and F.num_gist_tokens is not None:
            run = gist.load_run(F.workdir, num_gist_tokens=F.num_gist_tokens)
        runs.append(run)
    return runs


def main(argv):
    del argv
    try:
        runs = load_runs()
        for r in runs:
            print(f"{r.name:<12} {r.workdir} (step {r.step})")
        result = gist.evaluate(
            runs, splits=F.splits, num_examples=F.num_examples, max_new_tokens=F.max_new_tokens,
            batch_size=F.batch_size, max_length=F.max_length, efficiency=F.efficiency,
            efficiency_split=F.efficiency_split, timing_repeats=F.timing_repeats,
        )
    except (gist.GistError, DataError, NotACheckpointError) as e:
        raise SystemExit(f"error: {e}") from None
    paths = gist.write_eval(result, F.workdir)
    print()
    print(gist.format_table(result["eval"]))
    if result["efficiency"] is not None:
        print()
        print(gist.format_efficiency(result["efficiency"]))
    print()
    for k, v in paths.items():
        print(f"{k + ':':<11}{v}")


if __name__ == "__main__":
    app.run(main)
