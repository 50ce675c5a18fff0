"""Streaming perplexity of long texts at a fixed K/V budget: CCM's compressed memory vs a sliding window and
StreamingLLM (and the full prefix as the reference); optionally trains a streaming CCM first.

    python launch/stream_ccm.py --ccm=checkpoints/ccm --budget=160 --chunk=64 --num_docs=16
    python launch/stream_ccm.py --ccm=checkpoints/ccm --methods=ccm,ccm_cache_positions --skip_docs=200 --num_docs=8
    python launch/stream_ccm.py --train --config.workdir=checkpoints/ccm_stream   # train (configs/ccm_stream.py),
                                                                                  # then evaluate that run

Every stream is BOS + the first --doc_tokens tokens of one text, read in chunks of --chunk tokens; each chunk is
scored given the state the earlier chunks left (at most --budget K/V entries per layer). Methods and variants:
full, sliding, streaming_llm, ccm, streaming_llm_recompute, streaming_llm_absolute, ccm_cache_positions,
ccm_absolute_positions (`sycojax/methods/ccm/stream.py` says what each keeps). Prints a table, then where the
outputs went.
"""

import _common
from absl import app, flags

from sycojax.train.config import define_config_flag, parse_flags

flags.DEFINE_string("ccm", "checkpoints/ccm", "a CCM workdir (launch/train_ccm.py or --train) for the ccm methods")
flags.DEFINE_list("extra_ccm", [], "more CCM workdirs evaluated as extra `ccm@<workdir>` rows")
flags.DEFINE_list("methods", ["full", "sliding", "streaming_llm", "ccm"], "methods / variants to run, in order")
flags.DEFINE_integer("budget", 160, "K/V entries per layer kept between chunks (upstream's window: 160)")
flags.DEFINE_integer("chunk", 64, "tokens per chunk")
flags.DEFINE_integer("num_docs", 16, "streams")
flags.DEFINE_integer("doc_tokens", 1024, "tokens per stream after BOS (a multiple of --chunk)")
flags.DEFINE_enum("source", "sharegpt", ["sharegpt", "chitchat"], "where the long texts come from")
flags.DEFINE_integer("skip_docs", 0, "qualifying texts skipped first (e.g. a development set after the first N)")
flags.DEFINE_integer("comp_size", 64, "ccm: raw tokens compressed into one COMP group (upstream: 64)")
flags.DEFINE_integer("max_comp", 8, "ccm: COMP entries kept in memory (upstream: 8; merge keeps n_tok)")
flags.DEFINE_enum("ccm_positions", "absolute", ["absolute", "cache"],
                  "ccm: keys at their stream positions (the skip positions CCM trains with) or re-rotated to their "
                  "cache index (upstream's streaming code)")
flags.DEFINE_integer("sinks", 4, "streaming_llm: attention-sink tokens kept")
flags.DEFINE_integer("batch", 8, "streams per forward")
flags.DEFINE_string("model", "smollm2-135m-instruct", "base model when no ccm method runs (else the CCM run's)")
flags.DEFINE_string("results_json", "results/ccm_stream.json", "where the summary goes")
flags.DEFINE_bool("train", False, "train a streaming CCM with --config first, then evaluate it (--ccm is ignored)")
flags.DEFINE_bool("eval", True, "evaluate (with --train: --noeval stops after training)")
_common.define_training_flags()
_CONFIG = define_config_flag("config", _common.config_path("ccm_stream.py"), "streaming CCM training config")
F = flags.FLAGS


def main(argv):
    del argv
    _common.quiet_logs()
    from sycojax.methods.ccm.run import CCMError
    from sycojax.methods.ccm.stream import StreamError, format_table
    from sycojax.methods.ccm.stream_run import run_stream, train_stream_run
    from sycojax.train import check_values

    outputs = {}
    ccm_dir = F.ccm
    with _common.one_line_errors(CCMError, StreamError):
        if F.train:
            c = _CONFIG.value
            check_values(c)
            rep = train_stream_run(c, resume=F.resume, overwrite=F.overwrite)
            print(f"\nccm stream training: {rep['steps']} steps on {rep['windows']} windows, loss {rep['loss_first']} "
                  f"-> {rep['loss_last']}, {rep['wall_s']:.0f}s")
            outputs.update({f"train {k}": v for k, v in rep["outputs"].items()})
            ccm_dir = rep["outputs"]["workdir"]
        if F.eval:
            report = run_stream(ccm_workdir=ccm_dir, methods=F.methods, budget=F.budget, chunk=F.chunk,
                                num_docs=F.num_docs, doc_tokens=F.doc_tokens, source=F.source, skip=F.skip_docs,
                                comp_size=F.comp_size, max_comp=F.max_comp, ccm_positions=F.ccm_positions,
                                sinks=F.sinks, batch=F.batch, model=F.model, results_json=F.results_json,
                                extra_ccm=F.extra_ccm)
            print()
            print(format_table(report))
            if "ccm_below_baselines" in report:
                print(f"ccm below sliding and streaming_llm: {report['ccm_below_baselines']}")
            print(f"wall: {report['wall_s']:.0f}s")
            outputs["results"] = F.results_json
    print()
    for k, v in outputs.items():
        print(f"{k + ':':<22}{v}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
