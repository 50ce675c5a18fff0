"""Distil SmolLM2 into a clone whose chosen blocks' feed-forward is a kNN memory layer, on real text.

    python launch/distill_knn.py --config.workdir=checkpoints/knn --config.results_json=results/knn_distill.json
    python launch/distill_knn.py --config.method.blocks=10,11 --config.method.variants=featural [--resume | --overwrite]

Every field of `configs/knn.py` is reachable as `--config.<section>.<key>=...`. Prints the held-out KL and
perplexity of every variant, then where the outputs went.
"""

import _common
from absl import app

from sycojax.methods.knn.run import KNNError, train_run
from sycojax.train.config import define_config_flag, parse_flags

_CONFIG = define_config_flag("config", _common.config_path("knn.py"), "config file")
_common.define_training_flags()


def summary(report):
    v = report["variants"]
    yield (f"knn: FF of blocks {report['blocks']} replaced; held-out KL to the original / perplexity "
           f"({report['held_out_tokens']} tokens), {report['wall_s']:.0f}s")
    for name, r in v.items():
        gap = "" if r.get("gap_recovered") is None else f"  gap recovered {100 * r['gap_recovered']:5.1f}%"
        yield f"  {name:<12} KL {r['kl']:.4f}  ppl {r['ppl']:7.2f}  {r['steps']:>4} steps {r['train_s']:>6.0f}s{gap}"


def main(argv):
    del argv
    _common.run_training(_CONFIG.value, train_run, (KNNError,), summary=summary)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
