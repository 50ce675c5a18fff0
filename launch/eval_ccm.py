"""CCM per turn on held-out conversations beside full context, no context, a sliding window and gist.

    python launch/eval_ccm.py --ccm=checkpoints/ccm --merge=checkpoints/ccm_merge --gist=checkpoints/ccm_gist \
        --full=checkpoints/ccm_full --results_json=results/ccm_eval.json
    python launch/eval_ccm.py --ccm=checkpoints/ccm --conversations_file=my_dialogs.jsonl   # any {"turns": [...]} file

`--ccm` is a concat_recur workdir of launch/train_ccm.py; `--merge`, `--gist` and `--full` are the merge_recur, gist
and full kinds (`--config.method.attn_type=...`), each optional. Without `--conversations_file` the held-out test
split of the conversations `--ccm` was trained on is used (the same seed, never trained on). Prints a table (NLL per
turn and method), the summary over turns >= --from_turn, and where the outputs went.
"""

import json
import sys
import time
from pathlib import Path

import _common
from absl import app, flags

flags.DEFINE_string("ccm", None, "concat_recur workdir (launch/train_ccm.py)")
flags.DEFINE_string("merge", None, "merge_recur workdir (optional)")
flags.DEFINE_string("gist", None, "gist workdir (optional): the whole context compressed at once, every turn")
flags.DEFINE_string("full", None, "full workdir (optional): the uncompressed reference fine-tuned on the same dialogs; "
                    "without it full / none / sliding are the frozen base")
flags.DEFINE_string("conversations_file", None, 'JSONL of {"turns": [str, ...]} (default: the held-out test split)')
flags.DEFINE_integer("num_conversations", 60, "conversations evaluated")
flags.DEFINE_integer("min_turns", 6, "only conversations with at least this many turns")
flags.DEFINE_integer("max_turn", 14, "last target turn evaluated (upstream reports turns 3, 4, 6, 10, 14)")
flags.DEFINE_integer("from_turn", 6, "the summary pools turns >= this")
flags.DEFINE_integer("batch", 8, "conversations / rows per forward")
flags.DEFINE_string("results_json", "results/ccm_eval.json", "where the results go")
F = flags.FLAGS


def main(argv):
    del argv
    _common.quiet_logs()
    import jax
    import ml_collections

    from sycojax.methods.ccm import data as D  # noqa: PLC0415
    from sycojax.methods.ccm import evaluate as E  # noqa: PLC0415
    from sycojax.methods.ccm.run import CCMError, load_ccm, load_dialogs  # noqa: PLC0415
    from sycojax.models.loading import load_model  # noqa: PLC0415
    from sycojax.models.tokenizer import load_tokenizer  # noqa: PLC0415

    t0 = time.perf_counter()
    if not F.ccm:
        raise SystemExit("error: pass --ccm=<a concat_recur workdir of launch/train_ccm.py>")
    kinds = {"ccm_concat": (F.ccm, "concat_recur"), "ccm_merge": (F.merge, "merge_recur"), "gist": (F.gist, "gist"),
             "full": (F.full, "full")}
    flag = {"ccm_concat": "--ccm", "ccm_merge": "--merge", "gist": "--gist", "full": "--full"}
    with _common.one_line_errors(CCMError):
        metas = {name: load_ccm(path, attn_type=kind, flag=flag[name])[2] for name, (path, kind) in kinds.items() if path}
        base = {m["model"] for m in metas.values()}
        if len(base) > 1:
            raise CCMError(f"the workdirs were trained on different base models ({', '.join(sorted(base))}); "
                           "evaluate models of one base together")
        model_name = base.pop()
        cfg, params, _ = load_model(model_name)
        models = {}
        for name, (path, kind) in kinds.items():
            if path:
                tr, spec, _ = load_ccm(path, cfg, attn_type=kind, flag=flag[name])
                models[name] = E.Model(tr, spec)
        train_cfg = metas["ccm_concat"].get("config", {})
        max_turn_tokens = int(train_cfg.get("data", {}).get("max_turn_tokens", 40))
        tok = load_tokenizer(model_name)
        ids = E.Ids(bos=tok.bos_token_id, sep=int(tok("\n", add_special_tokens=False)["input_ids"][-1]),
                    eos=tok.eos_token_id)
        if F.conversations_file:
            dialogs, source = E.read_conversations(F.conversations_file), F.conversations_file
        else:
            c = ml_collections.ConfigDict(train_cfg)
            dialogs = D.split_conversations(load_dialogs(c), val=int(c.data.num_val), test=int(c.data.num_test),
                                            seed=int(c.data.seed))["test"]
            source = f"{c.data.source} test split (seed {c.data.seed}, never trained on)"
        picked = [d for d in dialogs if len(d["turns"]) >= F.min_turns][: F.num_conversations]
        if not picked:
            raise CCMError(f"no conversation in {source} has >= --min_turns={F.min_turns} turns; lower --min_turns")
    convs = [D.turn_ids(tok, d, max_turn_tokens)[: F.max_turn] for d in picked]
    print(f"eval_ccm: {len(convs)} conversations from {source}, turns 3..{F.max_turn}, methods "
          f"{', '.join(models)} (+ none, sliding{', base references' if 'full' in models else ''})")
    result = E.evaluate(params, cfg, models, convs, ids, max_turn=F.max_turn, from_turn=F.from_turn, batch=F.batch)
    train = {}
    for name, (path, _) in kinds.items():
        rep = Path(path or "") / "report.json"
        if path and rep.is_file():
            r = json.loads(rep.read_text())
            train[name] = {"rows": r.get("train_rows"), "steps": r.get("steps"), "wall_s": r.get("wall_s"),
                           "device": r.get("device"), "workdir": str(path)}
    out = Path(F.results_json)
    result = {"model": model_name, "n_conversations": len(convs), "source": source, "max_turn_tokens": max_turn_tokens,
              **result, "train": train,
              "references": ("full / none / sliding: the full kind (LoRA fine-tuned uncompressed on the same dialogs); "
                             "*_base: the frozen base") if "full" in models else "full / none / sliding: the frozen base",
              "device": jax.devices()[0].device_kind, "wall_s": round(time.perf_counter() - t0, 1),
              "command": "python launch/eval_ccm.py " + " ".join(sys.argv[1:])}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    png = E.plot(result, out.with_suffix(".png"))
    print("\n".join(E.table(result)))
    print(f"parallel vs recurrent logits: max |diff| {result['parity_max_abs_diff']:.2e}")
    print(f"results: {out}")
    print(f"plot: {png}")


if __name__ == "__main__":
    app.run(main)
