"""Train Compressed Context Memory (COMP tokens + conditional LoRA) on real dialogs, in one parallel pass.

    python launch/train_ccm.py --config.workdir=checkpoints/ccm [--resume | --overwrite]
    python launch/train_ccm.py --config.method.attn_type=merge_recur   # CCM-merge (default concat_recur)

Every field of `configs/ccm.py` is reachable as `--config.<section>.<key>=...`. Ends by printing where
the outputs went.
"""

import _common
from absl import app

from sycojax.methods.ccm.run import CCMError, train_run
from sycojax.train.config import define_config_flag, parse_flags

_CONFIG = define_config_flag("config", _common.config_path("ccm.py"), "config file")
_common.define_training_flags()


def summary(report):
    b, a = report["val_before"], report["val_after"]
    spec = report["spec"]
    yield (f"ccm {spec['attn_type']} n_tok={spec['n_tok']}: {report['steps']} steps on {report['train_rows']} rows, "
           f"{report['wall_s']:.0f}s")
    yield (f"validation NLL  ccm {b['ccm']:.3f} -> {a['ccm']:.3f}   full context {a['full']:.3f}   no context "
           f"{a['none']:.3f}   gap recovered {100 * a['gap_recovered']:.1f}%")


def main(argv):
    del argv
    _common.run_training(_CONFIG.value, train_run, (CCMError,), summary=summary)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
