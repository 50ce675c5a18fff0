"""Train one gisting condition (gist | pos_control | neg_control) on the Alpaca+ splits, with checkpoints.

    python launch/train_gist.py --config=configs/gist.py --config.method.condition=gist \\
        --config.method.num_gist_tokens=1 --config.workdir=checkpoints/gist/gist_k1
    python launch/train_gist.py --config.method.condition=pos_control --config.workdir=checkpoints/gist/pos
    python launch/train_gist.py --config.workdir=checkpoints/gist/gist_k1 --resume   # continue a run

Every field of `configs/gist.py` is reachable as `--config.<section>.<key>=...`. Ends by printing where the
outputs went; evaluate with launch/eval_gist.py.
"""

import _common  # sys.path, offline HF
from absl import app, flags

from sycojax.methods import gist
from sycojax.train.config import check_values, define_config_flag, parse_flags

_CONFIG = define_config_flag("config", _common.config_path("gist.py"), "config file")
flags.DEFINE_bool("resume", False, "continue the run in --config.workdir from its latest checkpoint")
F = flags.FLAGS


def main(argv):
    del argv
    with _common.one_line_errors(gist.GistError, FileExistsError):
        check_values(_CONFIG.value)
        report = gist.train_run(_CONFIG.value, resume=F.resume)
    curve = report["heldout_loss_curve"]
    print()
    print(f"{report['name']}: {report['steps']} steps on {report['train_examples']} examples "
          f"({report['dropped_too_long']} dropped as too long), final train loss {report['final_train_loss']:.4f}"
          + (f", held-out loss {curve[0][1]:.4f} -> {curve[-1][1]:.4f}" if len(curve) > 1 else "")
          + f", {report['time_s']:.0f}s")
    for k, v in report["outputs"].items():
        print(f"{k + ':':<11}{v}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
