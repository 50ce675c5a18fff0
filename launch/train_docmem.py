"""Train a document memory (a key-gated module on one block) with the guidance loss, on real documents.

    python launch/train_docmem.py --config.workdir=checkpoints/docmem [--resume | --overwrite]
    python launch/eval_docmem.py --workdirs=checkpoints/docmem       # recall, edit test, plots

Every field of `configs/docmem.py` is reachable as `--config.<section>.<key>=...`. Ends by printing where
the outputs went.
"""

import _common
from absl import app

from sycojax.methods.docmem.run import DocMemError, train_run
from sycojax.train.config import define_config_flag, parse_flags

_CONFIG = define_config_flag("config", _common.config_path("docmem.py"), "config file")
_common.define_training_flags()


def summary(report):
    ce = report["ce"]
    yield (f"docmem: {report['steps']} steps on {report['windows']} windows of {report['documents']} documents, "
           f"{report['wall_s']:.0f}s; CE own / other / zero key {ce['own']:.3f} / {ce['other']:.3f} / {ce['zero']:.3f} "
           f"(tau {report['tau']})")
    for name, r in report["recall"].items():
        yield f"  recall {name:<9} ROUGE-L {r['rouge_l']:.3f}  exact tokens {r['exact_token_match']:.3f}"


def main(argv):
    del argv
    _common.run_training(_CONFIG.value, train_run, (DocMemError,), summary=summary)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
