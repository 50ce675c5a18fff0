"""The inputs every job shares, prepared once by the parent, and lazy model loaders for the workers.

The parent process (`launch/bench.py`) tokenizes the prompts, exports the JAX weights to a Hugging
Face directory once (cached), and writes both into a spec that each worker process reads. Both
sides of a job therefore see the same token ids and the same weights, and a PyTorch worker never
imports JAX (nor a JAX worker PyTorch), so each one's peak RSS is its own framework's.

Prompts are real: the first turns of the 80 human-written MT-Bench questions, in the model's chat
template (with its default system turn). `forward` rows are their concatenated chat tokens cut to
`T`; generation prompts are single chat prompts (different lengths: the batch is left-padded).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

MODEL = "smollm2-135m-instruct"
N_PROMPTS = 8


@dataclasses.dataclass
class Inputs:
    """Token ids shared by both sides (plain lists: they travel as JSON)."""

    forward_rows: list[list[int]]  # (4, 256): the forward / training batch
    prompts: list[list[int]]  # N_PROMPTS chat prompts of different lengths
    pad_id: int
    vocab_size: int

    @classmethod
    def build(cls, model: str = MODEL, batch: int = 4, seq: int = 256) -> Inputs:
        from sycojax.data.mtbench import load_mtbench_questions
        from sycojax.models.tokenizer import chat_ids, load_tokenizer

        tok = load_tokenizer(model)
        questions = [q["turns"][0] for q in load_mtbench_questions()]
        prompts = [chat_ids(tok, q) for q in questions[:N_PROMPTS]]
        stream = [t for q in questions for t in chat_ids(tok, q)]
        if len(stream) < batch * seq:
            raise ValueError(f"MT-Bench gives {len(stream)} tokens, need {batch * seq}")
        rows = [stream[i * seq : (i + 1) * seq] for i in range(batch)]
        return cls(rows, prompts, int(tok.pad_token_id), len(tok))


@dataclasses.dataclass
class Context:
    """What a worker gets: the model name, the HF export of its weights, the shared inputs.

    `shared[job]`: that job's own inputs, computed once by the parent (`Job.prepare`), e.g. the
    teacher responses of `consolidate_e2e`. `prior[side]`: the results (`worker.run`'s dict) of this
    job's sides that ran before this one, in the job's `order`, e.g. the PyTorch side's final KL that
    the JAX side of `consolidate_e2e` has to reach.
    """

    model: str
    hf_dir: str
    inputs: Inputs
    threads: int
    shared: dict[str, Any] = dataclasses.field(default_factory=dict)
    prior: dict[str, dict] = dataclasses.field(default_factory=dict)
    device: str = "cpu"  # "cpu" or "gpu" (`hardware.DEVICES`): where both sides run
    torch_compile_mode: str = "default"  # the torch_compile peer's `torch.compile(mode=...)`

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, s: str) -> Context:
        d = json.loads(s)
        return cls(d["model"], d["hf_dir"], Inputs(**d["inputs"]), d["threads"], d.get("shared", {}),
                   d.get("prior", {}), d.get("device", "cpu"), d.get("torch_compile_mode", "default"))

    @functools.cached_property
    def jax_model(self) -> tuple[Any, dict]:
        """`(cfg, params)` with params as device arrays."""
        import jax

        from sycojax.models.loading import load_model

        cfg, params, _ = load_model(self.model)
        return cfg, jax.device_put(params)

    @functools.cached_property
    def hf_model(self):
        """transformers' `LlamaForCausalLM` (fp32, eval mode, default attention) of the same weights, on the
        benchmark device."""
        import torch
        from transformers import AutoModelForCausalLM

        from sycojax.bench.hardware import torch_device

        m = AutoModelForCausalLM.from_pretrained(self.hf_dir, dtype=torch.float32, local_files_only=True)
        return m.to(torch_device(self.device)).eval()


def export_for_torch(model: str = MODEL) -> Path:
    """Export the JAX-loaded weights once to `<cache>/bench-hf-<hash>` for the PyTorch side."""
    from sycojax.models.loading import default_cache_dir, export_hf, load_model

    cfg, params, info = load_model(model)
    out = default_cache_dir() / f"bench-hf-{info.content_hash.split(':')[-1][:16]}"
    if not (out / "model.safetensors").is_file() or not (out / "config.json").is_file():
        export_hf(params, cfg, out)
    return out
