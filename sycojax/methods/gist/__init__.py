"""Gisting (Mu, Li & Goodman 2023): compress an instruction into k `<GIST>` tokens, trained on Alpaca+ data.

Trees (never mixed with the frozen base):

    trainable = {"gist": (1, D) the <GIST> input embedding, initialised to the mean of the base embeddings,
                 "lora": LoRA tree (default: rank 16 on every linear of every layer)  — or —
                 "base": the whole base (train_base="full", upstream's full fine-tuning)}

`<GIST>` is token id `V = cfg.vocab_size` (one id, k copies); the model reads it from
`Adapters(embeddings=trainable["gist"])`. The embedding is its own tree even with tied embeddings (SmolLM2):
the output head keeps the real vocabulary only, so `<GIST>` is never generated.

Prompt format: the ChatML variant of `sycojax.data.gist_format` by default (`data.fmt="chatml"`)::

    <|im_start|>system\\n{default system}<|im_end|>\\n<|im_start|>user\\n{instruction}<GIST>×k\\n{input}<|im_end|>\\n
    <|im_start|>assistant\\n{output}<|im_end|>

chosen over upstream's bare `Instruction: …\\n<GIST>×k\\nInput: …\\nOutput:` because the instruct model
answers its own chat template far better (untrained, 18–29% of its outputs on the bare format are empty,
which would make every condition start from a broken baseline). `data.fmt="bare"` gives upstream's format.
Everything before the gist span (template head + instruction) is what the gist tokens compress.

Conditions (each its own training run, as in the paper): `gist`, `pos_control` (full attention: the
upper bound), `neg_control` (tokens after the gist span see neither the instruction nor the gist: the
lower bound). The gist tokens are in the prompt in every condition; only the mask differs
(`sycojax.masks.gist_mask`, formulas in `sycojax/masks/gist.py`).

Loss: next-token cross-entropy on the completion tokens only, under the condition's mask, with raw absolute
positions (`positions_from_valid`: left padding is skipped, gist tokens keep their positions)::

    L = Σ_{b,t} w[b,t] · (logsumexp_v z[b,t,v] − z[b,t,labels[b,t+1]]) / Σ w,   w[b,t] = [labels[b,t+1] ≠ −100]

Serving: `gist` / `neg_control` decode from a gist cache (`sycojax.infer.gist_cache`: the instruction is
compressed once into the k gist K/V, batched); `pos_control` decodes the whole prompt (`sycojax.infer.generate`).

Where each part lives (the shape every method in `sycojax/methods/` follows):

    spec.py        `GistSpec` (condition, k, train_base, format), `gist_token_id`, `GistError`
    trees.py       the `<GIST>` row + LoRA (or the base): init, `split_trees`, `serving_trees` (LoRA merged)
    data.py        Alpaca+ records → gisted, left-padded rows (`encode_records`, `batch_arrays`, `build_train_data`)
    loss.py        `completion_nll` under the condition's mask, `make_loss_fn`, `mean_completion_loss`
    runs.py        a run on disk: checkpoint metadata, the resume check, `load_run` → `GistRun`
    eval.py        greedy decoding from the gist cache / the whole prompt (`gist_generate`, `full_prompt_generate`)
    efficiency.py  what the gist cache saves (compression, KV bytes, FLOPs, wall-clock)
    report.py      the eval table and efficiency as text, the eval JSON files
    run.py         the entry points, top to bottom: `train_run` and `evaluate`

Entry points: `train_run(config)` (launch/train_gist.py), `load_run(workdir)` + `evaluate(runs)`
(launch/eval_gist.py). Writes `<workdir>/ckpt/` (Orbax, via `sycojax.train.train`), `report.json`,
`metrics.jsonl`; evaluation writes `eval.json`, `eval_efficiency.json`, `eval_samples.json`.
"""

from __future__ import annotations

from sycojax.methods.gist.data import TrainData, batch_arrays, build_train_data, encode_records, splits_from_config
from sycojax.methods.gist.efficiency import measure_efficiency
from sycojax.methods.gist.eval import full_prompt_generate, gist_generate
from sycojax.methods.gist.loss import completion_nll, make_loss_fn, mean_completion_loss
from sycojax.methods.gist.report import (
    EFFICIENCY_FILE,
    EVAL_FILE,
    OUTPUTS_FILE,
    SAMPLES_FILE,
    format_efficiency,
    format_table,
    write_eval,
)
from sycojax.methods.gist.run import evaluate, train_run
from sycojax.methods.gist.runs import REPORT, GistRun, check_resume, default_workdir, load_run, run_metadata
from sycojax.methods.gist.spec import EVAL_SPLITS, TRAIN_BASE, GistError, GistSpec, gist_token_id
from sycojax.methods.gist.trees import init_trainable, lora_bytes, serving_trees, split_trees

__all__ = [
    "EFFICIENCY_FILE", "EVAL_FILE", "EVAL_SPLITS", "OUTPUTS_FILE", "REPORT", "SAMPLES_FILE", "TRAIN_BASE",
    "GistError", "GistRun", "GistSpec", "TrainData", "batch_arrays", "build_train_data", "check_resume",
    "completion_nll", "default_workdir", "encode_records", "evaluate", "format_efficiency", "format_table",
    "full_prompt_generate", "gist_generate", "gist_token_id", "init_trainable", "load_run", "lora_bytes",
    "make_loss_fn", "mean_completion_loss", "measure_efficiency", "run_metadata", "serving_trees",
    "split_trees", "splits_from_config", "train_run", "write_eval",
]
