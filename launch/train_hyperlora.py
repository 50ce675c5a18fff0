"""Train HyperLoRA's generator on real contexts and evaluate it on held-out ones (issue 23).

    python launch/train_hyperlora.py --config.workdir=checkpoints/hyperlora \\
        --config.results_json=results/hyperlora_eval.json --config.results_png=results/hyperlora_gap_closed.png
    python launch/train_hyperlora.py --config.eval.optimised= ...   # without the optimised LoRA row
    python launch/train_hyperlora.py ... --resume | --overwrite

Every field of `configs/hyperlora.py` is reachable as `--config.<section>.<key>=...`. Prints the median gap closed
on the test contexts (hyper, its controls, the optimised LoRA), then where the outputs went. Then
`launch/consolidate.py --method=hyper --hyper=<workdir> --context=...` turns any context into a LoRA workdir.
"""

import _common
from absl import app

from sycojax.methods.hyperlora import HyperError
from sycojax.methods.hyperlora.run import train_run
from sycojax.train.config import define_config_flag, parse_flags

_CONFIG = define_config_flag("config", _common.config_path("hyperlora.py"), "config file")
_common.define_training_flags()


def summary(r):
    t = r["test"]
    yield (f"hyper: {r['n_train_contexts']} training contexts, {r['steps']} steps; {r['n_test_contexts']} held-out "
           f"test contexts; generator {r['params']:,} params, {r['generate_s']:.3f}s per context")
    yield "  median KL gap closed: " + "  ".join(
        f"{k} {'-' if v is None else f'{100 * v:.1f}%'}" for k, v in t.items())
    yield "  targets met: " + ", ".join(f"{k}={v}" for k, v in r["met"].items())


def run(c, *, resume, overwrite):
    return train_run(c, resume=resume, overwrite=overwrite, consolidation=_common.load_config("consolidate.py"))


def main(argv):
    del argv
    _common.run_training(_CONFIG.value, run, (HyperError,), summary=summary)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
