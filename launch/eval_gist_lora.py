"""LoRA compression of gisting instructions (issue 5, Phase 1): one consolidated LoRA patch per instruction.

    python launch/eval_gist_lora.py --eval_json=checkpoints/gist/eval/eval.json --splits=seen,unseen,human \\
        --ranks=2,8,16 --num_instructions=8 --samples_json=checkpoints/gist/eval/eval_samples.json
    python launch/eval_gist_lora.py --eval_json=/tmp/gl/eval.json --splits=unseen --ranks=2 \\
        --num_instructions=1 --steps=2 --max_new_tokens=16 --num_queries=4 --max_response_tokens=16   # smoke

Each selected instruction of each split is consolidated into a LoRA patch per rank (teacher: the base model
with the instruction in its prompt; student: the input only) and scored on the same examples as the gist
conditions (a small subset: `n` says how many); see `sycojax.methods.gist_lora`. ADDS `lora_r<r>` (and,
with --baselines, `lora_teacher` and `lora_r0`) to --eval_json = {split: {condition: {"rougeL",
"rougeL_vs_pos", "n", "n_ref", "loss", ...}}}, creating it when missing and keeping every other entry
(written atomically); per-instruction queries, outputs and loss curves go to eval_lora_details.json beside it.
--gist_workdir (a gist run) gives the model, the Alpaca+ split settings, the prompt format and max_length,
so the examples are those of the gist eval; without it they come from configs/gist.py.
"""

import os

import _common  # repo root on sys.path, offline Hugging Face (before any sycojax import)
from absl import app, flags

from sycojax.data import DataError
from sycojax.methods import gist
from sycojax.methods import gist_lora as gl
from sycojax.train.inspection import CheckpointReader, NotACheckpointError

flags.DEFINE_string("eval_json", None, "eval.json to add the lora_r<r> entries to (created when missing)",
                    required=True)
flags.DEFINE_list("splits", ["seen", "unseen", "human"], "splits to evaluate")
flags.DEFINE_list("ranks", ["2", "8", "16"], "LoRA ranks (alpha = 2r, all linear layers)")
flags.DEFINE_integer("num_instructions", 8, "instructions per split (each trains one LoRA per rank)")
flags.DEFINE_integer("examples_per_instruction", 4, "evaluated examples per instruction (seen tasks have many)")
flags.DEFINE_integer("num_examples", 100, "the pool: the first examples of each split, as eval_gist.py")
flags.DEFINE_string("samples_json", None,
                    "the gist eval's eval_outputs.json (every output; eval_samples.json has 3): "
                    "pos_control outputs give rougeL_vs_pos")
flags.DEFINE_string("gist_workdir", None, "a gist run whose config gives model, data splits, fmt and max_length")
flags.DEFINE_string("model", None, "base model (default: the gist run's, else configs/gist.py's)")
flags.DEFINE_integer("max_new_tokens", 128, "greedy tokens per evaluated output")
flags.DEFINE_integer("batch_size", 8, "decoding batch size")
flags.DEFINE_integer("max_length", None, "prompt token budget (default: the gist run's / config's data.max_length)")
flags.DEFINE_integer("steps", 8, "training steps per rank and instruction")
flags.DEFINE_float("lr", 2e-3, "peak learning rate (cosine to 0)")
flags.DEFINE_integer("num_queries", 8, "training inputs per instruction (train split, else self-study)")
flags.DEFINE_integer("samples_per_query", 1, "teacher responses per training input")
flags.DEFINE_integer("max_response_tokens", 48, "tokens per teacher response trained on")
flags.DEFINE_integer("self_study_tokens", None, "tokens per self-study input (default: --max_response_tokens)")
flags.DEFINE_integer("gen_batch", 8, "rows per sampling call (self-study inputs, teacher responses)")
flags.DEFINE_integer("train_batch_size", 8, "rows per training step")
flags.DEFINE_integer("topk", 64, "teacher log-probs kept per response token")
flags.DEFINE_bool("baselines", True, "also score lora_teacher (base + instruction) and lora_r0 (base, no patch)")
flags.DEFINE_integer("seed", 0, "seed of sampling and LoRA init")
flags.DEFINE_string("compile_cache", "", "persistent XLA compilation cache directory ('' = off)")
F = flags.FLAGS


def data_config() -> tuple[str, dict]:
    """(model name, data section) from --gist_workdir's checkpoint, else configs/gist.py."""
    if F.gist_workdir:
        reader = CheckpointReader(F.gist_workdir)
        try:
            config = reader.meta(reader.resolve_step(None)).get("config") or {}
        finally:
            reader.close()
        if "data" not in config or "model" not in config:
            raise gl.GistLoraError(f"{F.gist_workdir} holds no gisting config (launch/train_gist.py writes one)")
        return config["model"]["name"], dict(config["data"])
    from configs.gist import get_config

    c = get_config()
    return c.model.name, c.data.to_dict()


def main(argv):
    del argv
    _common.quiet_logs()
    if F.compile_cache:
        from sycojax.methods.sycomode_bench import enable_compile_cache

        enable_compile_cache(F.compile_cache)
    try:
        ranks = gl.parse_ranks(F.ranks)
        unknown = [s for s in F.splits if s not in gist.EVAL_SPLITS]
        if unknown or not F.splits:
            raise gl.GistLoraError(f"unknown --splits {unknown or F.splits}; choose among {','.join(gist.EVAL_SPLITS)}")
        model_name, d = data_config()
        model_name = F.model or model_name
        spec = gl.LoraEvalSpec(
            ranks=ranks, steps=F.steps, lr=F.lr, num_queries=F.num_queries, samples_per_query=F.samples_per_query,
            max_response_tokens=F.max_response_tokens, batch_size=F.train_batch_size, topk=F.topk,
            self_study_tokens=F.self_study_tokens or F.max_response_tokens, gen_batch=F.gen_batch,
            fmt=str(d.get("fmt", "chatml")), max_length=int(F.max_length or d.get("max_length", 256)), seed=F.seed,
        )
        pos = gl.pos_outputs_from_samples(F.samples_json) if F.samples_json else None
        gl.read_eval_json(F.eval_json)  # a malformed eval.json fails now, not after an hour of work

        from sycojax.models.loading import load_model
        from sycojax.models.tokenizer import load_tokenizer

        model = load_model(model_name)
        tok = load_tokenizer(model_name)
        splits = gist.splits_from_config(d)
        print(f"model {model_name}; ranks {list(ranks)}; {F.num_instructions} instruction(s) per split; "
              f"{spec.num_queries} queries x {spec.samples_per_query}, {spec.steps} steps, lr {spec.lr}")
        result = gl.evaluate_lora(
            spec, model=model, tokenizer=tok, data_splits=splits, splits=F.splits,
            num_instructions=F.num_instructions, examples_per_instruction=F.examples_per_instruction,
            num_examples=F.num_examples, max_new_tokens=F.max_new_tokens, batch_size=F.batch_size,
            baselines=F.baselines, pos_outputs=pos,
        )
        gl.add_to_eval_json(F.eval_json, result["eval"])
        details = gl.details_path(F.eval_json)
        gl.write_details(details, result["details"])
    except (gist.GistError, DataError, NotACheckpointError) as e:
        raise SystemExit(f"error: {e}") from None
    print()
    print(gl.format_table(result["eval"]))
    print()
    print(f"{'eval:':<9}{os.path.abspath(F.eval_json)}")
    print(f"{'details:':<9}{os.path.abspath(details)}")


if __name__ == "__main__":
    app.run(main)
