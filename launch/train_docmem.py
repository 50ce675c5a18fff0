"""Train a document memory (a key-gated module on one block) with the guidance loss, on real documents.

    python launch/train_docmem.py --config.workdir=checkpoints/docmem [--resume | --overwrite]

Every field of `configs/docmem.py` is reachable as `--config.<section>.<key>=...`. Ends by printing where
the outputs went.
"""

import _common
from absl import app, flags

from sycojax.methods.docmem.run import DocMemError, train_run
from sycojax.train import distributed
from sycojax.train.config import check_values, define_config_flag, parse_flags

_CONFIG = define_config_flag("config", _common.config_path("docmem.py"), "config file")
flags.DEFINE_bool("resume", False, "continue the run in --config.workdir from its latest checkpoint")
flags.DEFINE_bool("overwrite", False, "replace the run in --config.workdir")
distributed.define_flags()
F = flags.FLAGS


def main(argv):
    del argv
    _common.quiet_logs()
    distributed.maybe_initialize_from_flags()
    with _common.one_line_errors(DocMemError):
        c = _CONFIG.value
        check_values(c)
        report = train_run(c, resume=F.resume, overwrite=F.overwrite)
    print()
    print(f"docmem: {report['steps']} steps on {report['windows']} windows of {report['documents']} documents, "
          f"{report['wall_s']:.0f}s; CE own / other / zero key {report['ce']['own']:.3f} / {report['ce']['other']:.3f} / "
          f"{report['ce']['zero']:.3f} (tau {report['tau']})")
    for name, r in report["recall"].items():
        print(f"  recall {name:<9} ROUGE-L {r['rouge_l']:.3f}  exact tokens {r['exact_token_match']:.3f}")
    for k, v in report["outputs"].items():
        print(f"{k + ':':<11}{v}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
