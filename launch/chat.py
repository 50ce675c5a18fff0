"""Chat with a consolidated model: the context lives in the adapter, not in the prompt.

    python launch/chat.py --adapter=checkpoints/demo                 # interactive (empty line quits)
    python launch/chat.py --adapter=checkpoints/demo --prompt="Who are you?"
    python launch/chat.py --adapter=checkpoints/demo --prompt="Who are you?" --compare   # + teacher / baseline
"""

import sys

import _common  # noqa: F401
from absl import app, flags

from sycojax.methods.sycomode import ConsolidationError, load_consolidated, reply

flags.DEFINE_string("adapter", None, "a consolidation --workdir (or its adapter/ folder)", required=True)
flags.DEFINE_string("prompt", None, "one message; omit for an interactive chat")
flags.DEFINE_integer("max_new_tokens", 128, "maximum new tokens per reply")
flags.DEFINE_bool("compare", False, "also show the base model with the context (teacher) and without it (baseline)")
F = flags.FLAGS


def main(argv):
    del argv
    _common.quiet_logs()
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
