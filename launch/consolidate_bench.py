"""Consolidation benchmark: ≥ 8 kinds of context × {lora, memory, full} on SmolLM2, teacher once per context.

    python launch/consolidate_bench.py                        # the README table, plot and JSON
    python launch/consolidate_bench.py --contexts=pirate,french --methods=lora,memory --steps=24
    python launch/consolidate_bench.py --quick                # smoke test (tiny settings, outputs in /tmp)
    python launch/consolidate_bench.py --config.methods.memory.lr=5e-2 --config.bench.num_train_queries=16
    python launch/consolidate_bench.py --contexts=pirate,json --json=/tmp/a.json &   # contexts side by side
    python launch/consolidate_bench.py --contexts=french,caps --json=/tmp/b.json; wait
    python launch/consolidate_bench.py --merge=/tmp/a.json,/tmp/b.json    # -> one table, JSON and plot
    python launch/consolidate_bench.py --methods=hyper --hyper=checkpoints/hyperlora \
        --json=results/consolidate_bench_hyper.json --plot=/tmp/hyper_kl.png   # the generated LoRA; nothing trains

Prints one line per (context, method) as it goes, then the table and the per-method summary; writes
the JSON (after every context, so a partial run keeps what it measured) and the KL-vs-step plot.
What each number means: `sycojax/methods/sycomode_bench/`.
"""

import json
import os

import _common  # repo root on sys.path, offline Hugging Face
from absl import app, flags

from sycojax.methods import sycomode_bench as sb
from sycojax.methods.hyperlora import HyperError
from sycojax.methods.sycomode import ConsolidationError
from sycojax.train.config import define_config_flag, parse_flags

_CONFIG = define_config_flag("config", _common.config_path("consolidate_bench.py"), "config file")
F = flags.FLAGS
flags.DEFINE_string("contexts", None, "comma list of contexts (default: all; --quick: pirate,facts)")
flags.DEFINE_string("methods", None, "comma list among lora,memory,full,hyper (default: lora,memory,full)")
flags.DEFINE_string("hyper", None, "the hyper row's trained generator: a launch/train_hyperlora.py workdir "
                    "(default: methods.hyper.hyper, checkpoints/hyperlora)")
flags.DEFINE_integer("steps", None, "optimizer steps for every method (default: each method's config)")
flags.DEFINE_bool("quick", False, "tiny settings: a smoke test of the pipeline, not a measurement")
flags.DEFINE_string("json", None, "JSON output (default results/consolidate_bench.json; --quick: /tmp/...)")
flags.DEFINE_list("merge", None, "JSONs of runs over disjoint --contexts to merge into one result (runs nothing)")
flags.DEFINE_string("plot", None, "KL-vs-step PNG (default results/consolidate_bench_kl.png; --quick: /tmp/...)")


def main(argv):
    del argv
    c = _CONFIG.value
    if F.quick:
        sb.apply_quick(c, contexts_given=F.contexts is not None)
    if F.contexts is not None:
        c.bench.contexts = F.contexts
    if F.methods is not None:
        c.bench.methods = F.methods
    if F.steps is not None:
        sb.apply_steps(c, F.steps)
    if F.hyper is not None:
        c.methods.hyper.hyper = F.hyper
    out_dir = "/tmp" if F.quick else os.path.join(_common.ROOT, "results")
    json_path = F.json or os.path.join(out_dir, "consolidate_bench" + ("_quick" if F.quick else "") + ".json")
    plot_path = F.plot or os.path.join(out_dir, "consolidate_bench" + ("_quick" if F.quick else "") + "_kl.png")
    sb.enable_compile_cache(os.path.join(_common.ROOT, c.bench.compile_cache) if c.bench.compile_cache else "")

    def save(result):
        os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
        sb.plot_kl(result, plot_path)

    with _common.one_line_errors(HyperError):
        if F.merge:
            missing = [p for p in F.merge if not os.path.isfile(p)]
            if missing:
                raise ConsolidationError(f"--merge: no such file {missing}")
            parts = []
            for p in F.merge:
                with open(p) as f:
                    parts.append(json.load(f))
            result = sb.merge_results(parts)
            save(result)
        else:
            result = sb.run_bench(c, on_context=save)
    print()
    print(sb.format_table(result))
    print()
    print(f"total {result['wall_s']:.0f}s")
    print(f"json: {json_path}")
    print(f"plot: {plot_path}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
