"""Train Compressed Context Memory (COMP tokens + conditional LoRA) on real dialogs, in one parallel pass.

    python launch/train_ccm.py --config.workdir=checkpoints/ccm [--resume | --overwrite]

Every field of `configs/ccm.py` is reachable as `--config.<section>.<key>=...`. Ends by printing where
the outputs went.
"""

import _common
from absl import app, flags

from sycojax.methods.ccm.run import CCMError, train_run
from sycojax.train import distributed
from sycojax.train.config import check_values, define_config_flag, parse_flags

_CONFIG = define_config_flag("config", _common.config_path("ccm.py"), "config file")
flags.DEFINE_bool("resume", False, "continue the run in --config.workdir from its latest checkpoint")
flags.DEFINE_bool("overwrite", False, "replace the run in --config.workdir")
distributed.define_flags()
F = flags.FLAGS


def main(argv):
    del argv
    _common.quiet_logs()
    distributed.maybe_initialize_from_flags()
    with _common.one_line_errors(CCMError):
        c = _CONFIG.value
        check_values(c)
        report = train_run(c, resume=F.resume, overwrite=F.overwrite)
    b, a = report["val_before"], report["val_after"]
    print()
    print(f"ccm n_tok={report['spec']['n_tok']}: {report['steps']} steps on {report['train_rows']} rows, "
          f"{report['wall_s']:.0f}s")
    print(f"validation NLL  ccm {b['ccm']:.3f} -> {a['ccm']:.3f}   full context {a['full']:.3f}   no context "
          f"{a['none']:.3f}   gap recovered {100 * a['gap_recovered']:.1f}%")
    for k, v in report["outputs"].items():
        print(f"{k + ':':<11}{v}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
