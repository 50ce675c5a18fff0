"""SyCoMode's three experiments: full context / no context / consolidated (reference/upstream.md §1).

    python launch/experiments.py --experiment=1 --runs=16        # alphabet: P(next letter), mean ± std
    python launch/experiments.py --experiment=2                  # facts: answer perplexity
    python launch/experiments.py --experiment=3 --method=memory  # JAXA passage: answer perplexity
    python launch/experiments.py --experiment=2 --json           # also record it in results/experiments.json

The context is consolidated with `--method` (lora | memory | full) and `--objective`; everything else
is `--config.<field>=...` (configs/experiments.py). What is measured: sycojax/methods/sycomode_experiments/.
"""

import json
import os

import _common  # repo root on sys.path, offline Hugging Face
from absl import app, flags

from sycojax.methods import sycomode_experiments as se
from sycojax.methods.sycomode import METHODS, OBJECTIVES
from sycojax.methods.sycomode_bench import enable_compile_cache
from sycojax.train.config import check_values, define_config_flag, parse_flags

_CONFIG = define_config_flag("config", _common.config_path("experiments.py"), "config file")
F = flags.FLAGS
flags.DEFINE_enum("experiment", None, ["1", "2", "3"], "1 alphabet, 2 facts, 3 JAXA passage")
flags.DEFINE_enum("method", None, list(METHODS), "what the context is consolidated into (default lora)")
flags.DEFINE_enum("objective", None, list(OBJECTIVES), "consolidation objective (default distill_on_generated_text)")
flags.DEFINE_integer("runs", None, "experiment 1: random alphabet runs")
flags.DEFINE_integer("steps", None, "optimizer steps")
flags.DEFINE_float("lr", None, "learning rate (default: the method's, configs/experiments.py)")
flags.DEFINE_bool("json", False, "record the result in --json_path")
flags.DEFINE_string("json_path", os.path.join(_common.ROOT, "results", "experiments.json"), "JSON file to update")
flags.mark_flag_as_required("experiment")


def main(argv):
    del argv
    c = _CONFIG.value
    if F.method:
        c.method.name = F.method
    if F.objective:
        c.method.objective = F.objective
    if F.runs is not None:
        c.runs = F.runs
    if F.steps is not None:
        c.train.num_steps = F.steps
    if F.lr is not None:
        c.optim.lr = F.lr
    if c.optim.lr < 0:
        c.optim.lr = c.method.lr_by_method[c.method.name]
    enable_compile_cache(os.path.join(_common.ROOT, "checkpoints", "cache", "xla"))
    with _common.one_line_errors():
        check_values(c)
        res = se.run_experiment(c, int(F.experiment))
    print()
    print(se.format_result(res))
    if F.json:
        path = F.json_path
        data = {}
        if os.path.exists(path):
            with open(path) as f:
                data = json.load(f)
        data.setdefault(f"experiment{res['experiment']}", {})[f"{res['method']}/{res['objective']}"] = res
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(data, f, indent=1)
        print(f"json: {path}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
