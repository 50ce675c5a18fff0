"""Chat with a consolidated model: the context lives in the adapter, not in the prompt.

    python launch/chat.py --adapter=checkpoints/demo                 # interactive (empty line quits)
    python launch/chat.py --adapter=checkpoints/demo --prompt="Who are you?"
    python launch/chat.py --adapter=checkpoints/demo --prompt="Who are you?" --compare   # + teacher / baseline
    python launch/chat.py --ccm=checkpoints/ccm          # a chat that keeps only compressed memory (CCM)

With --ccm every turn (yours and the reply) is compressed into n_tok COMP K/V entries per layer after it
is answered; the next reply reads that memory and the current turn only. After every reply one status line:
turn, memory entries, memory bytes, and what the full context's K/V would take. Reads stdin pipes too.
"""

import sys

import _common  # noqa: F401
from absl import app, flags

from sycojax.methods.sycomode import ConsolidationError, load_consolidated, reply

flags.DEFINE_string("adapter", None, "a consolidation --workdir (or its adapter/ folder)")
flags.DEFINE_string("ccm", None, "a launch/train_ccm.py workdir: chat from compressed memory")
flags.DEFINE_string("prompt", None, "one message; omit for an interactive chat")
flags.DEFINE_integer("max_new_tokens", 128, "maximum new tokens per reply")
flags.DEFINE_bool("compare", False, "also show the base model with the context (teacher) and without it (baseline)")
F = flags.FLAGS


def ccm_chat() -> None:
    from sycojax.methods import ccm  # noqa: PLC0415
    from sycojax.methods.ccm.run import CCMError, load_ccm  # noqa: PLC0415
    from sycojax.models.loading import load_model  # noqa: PLC0415
    from sycojax.models.tokenizer import load_tokenizer  # noqa: PLC0415

    with _common.one_line_errors(CCMError):
        tr, spec, meta = load_ccm(F.ccm)
        cfg, params, _ = load_model(meta["model"])
        load_ccm(F.ccm, cfg)  # the trees fit this model
        if not spec.recurrent:
            raise CCMError(f"--ccm {F.ccm} holds the {spec.attn_type!r} reference of launch/eval_ccm.py, which keeps no "
                           "memory between turns; point at a concat_recur or merge_recur workdir")
    tok = load_tokenizer(meta["model"])
    sep, bos, eos = int(tok("\n", add_special_tokens=False)["input_ids"][-1]), tok.bos_token_id, tok.eos_token_id
    max_turn = int(meta.get("config", {}).get("data", {}).get("max_turn_tokens", 40))
    kv_per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4
    print(f"[CCM n_tok={spec.n_tok} {spec.attn_type} on {meta['model']}: only compressed memory is kept]")
    mem, turn, full_tokens = ccm.CompressedMemory.empty(cfg, 1), 0, 1  # BOS
    inputs = [F.prompt] if F.prompt else None
    while True:
        if inputs is not None:
            if not inputs:
                break
            msg = inputs.pop()
            print(f"> {msg}")
        else:
            try:
                msg = input("> " if sys.stdin.isatty() else "").strip()
            except EOFError:
                break
            if not msg:
                break
        you, me = "AB"[turn % 2], "AB"[(turn + 1) % 2]
        inp = tok(f"{you}: {msg}", add_special_tokens=False)["input_ids"][:max_turn]
        head = tok(f"{me}:", add_special_tokens=False)["input_ids"]
        reply_ids = ccm.generate(params, cfg, mem, [[sep, *inp, sep, *head]], eos=eos,
                                 max_new_tokens=F.max_new_tokens)[0]
        text = tok.decode(reply_ids, skip_special_tokens=True).strip()
        print(f"{me}: {text}")
        out = tok(f"{me}: {text}", add_special_tokens=False)["input_ids"][:max_turn]
        for t in (inp, out):  # the first segment starts with BOS, every later one with SEP (as in training)
            mem = ccm.update(params, tr, cfg, spec, mem, [t], bos=bos, sep=sep)
        turn += 2
        full_tokens += len(inp) + len(out) + 2
        grows = "fixed size: the running mean of the turns" if spec.merge else f"{spec.n_tok} more per turn"
        print(f"[turn {mem.turns}: memory {mem.entries} K/V entries per layer ({grows}), "
              f"{mem.nbytes / 1e3:.1f} kB; the full context would be {full_tokens} tokens, "
              f"{full_tokens * kv_per_token / 1e3:.1f} kB]")
        sys.stdout.flush()


def main(argv):
    del argv
    _common.quiet_logs()
    if F.ccm:
        return ccm_chat()
    if not F.adapter:
        raise SystemExit("error: pass --adapter=<consolidation workdir> or --ccm=<train_ccm workdir>")
    try:
        model = load_consolidated(F.adapter)
    except (ConsolidationError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"[{model.spec.method} adapter for {model.meta['model']}; "
          f"context ({len(model.context)} chars) is NOT in the prompt]")
    prompts = [F.prompt] if F.prompt else None
    history: list[dict] = []
    while True:
        if prompts is not None:
            if not prompts:
                break
            msg = prompts.pop()
            print(f"> {msg}")
        else:
            try:
                msg = input("> ").strip()
            except EOFError:
                break
            if not msg:
                break
        out = reply(model, msg, history=history, max_new_tokens=F.max_new_tokens, compare=F.compare)
        print(out["student"])
        if F.compare:
            print(f"  [teacher, context in prompt] {out['teacher']}")
            print(f"  [baseline, no context]       {out['baseline']}")
        history += [{"role": "user", "content": msg}, {"role": "assistant", "content": out["student"]}]
        sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)
