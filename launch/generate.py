"""Answer one chat prompt with a model (default: the embedded SmolLM2-135M-Instruct).

    python launch/generate.py --prompt="What is the capital of France?"
    python launch/generate.py --model=/path/to/hf_dir --system="Answer in French." --prompt="Hi" --temperature=0.7
"""

import time

import _common  # noqa: F401
from absl import app, flags

from sycojax.infer.generate import Sampling, generate
from sycojax.models import SequenceTooLong
from sycojax.models.loading import LoadError, load_model
from sycojax.models.tokenizer import chat_ids, load_tokenizer

flags.DEFINE_string("model", "smollm2-135m-instruct",
                    "model name (see sycojax.models.loading.KNOWN_MODELS), HF dir or .gguf")
flags.DEFINE_string("prompt", None, "the user message", required=True)
flags.DEFINE_string("system", None, "system message (default: the chat template's own)")
flags.DEFINE_integer("max_new_tokens", 128, "maximum new tokens")
flags.DEFINE_float("temperature", 0.0, "0 = greedy")
flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass")
flags.DEFINE_integer("seed", 0, "sampling seed")
F = flags.FLAGS


def main(argv):
    del argv
    _common.quiet_logs()
    try:
        cfg, params, _ = load_model(F.model)
        tok = load_tokenizer(F.model)
        ids = chat_ids(tok, F.prompt, system=F.system)
        t0 = time.perf_counter()
        g = generate(params, cfg, [ids], max_new_tokens=F.max_new_tokens, sampling=Sampling(F.temperature, F.top_p),
                     seed=F.seed)
    except (LoadError, SequenceTooLong, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    dt = time.perf_counter() - t0
    print(tok.decode(g.rows()[0], skip_special_tokens=True).strip())
    print(f"\n[{int(g.lengths[0])} tokens in {dt:.1f}s, including compilation]")


if __name__ == "__main__":
    app.run(main)
