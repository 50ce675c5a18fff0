"""Consolidation on raw text: the `Spec` of a config, the student's targets for each objective (teacher
run once; memory tokens spliced in), and `consolidate_raw` through the shared loop.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

from sycojax.adapters import LoraConfig
from sycojax.infer.generate import GREEDY, Sampling
from sycojax.methods import sycomode as sm
from sycojax.methods.sycomode import with_memory
from sycojax.methods.sycomode_experiments.data import RawFormat, encode, raw_prompts
from sycojax.models import Adapters, ModelConfig
from sycojax.train import ArrayIterator, train


def spec_from_config(c: ml_collections.ConfigDict) -> sm.Spec:
    m = c.method
    return sm.Spec(
        method=m.name,
        objective=m.objective,
        lora=LoraConfig(rank=int(m.lora_rank), alpha=float(m.lora_alpha), targets=("all",)),
        num_mem_tokens=int(m.num_mem_tokens),
        mem_init=m.mem_init,
        temperature=float(m.temp),
        topk=int(m.topk),
        topk_tail=bool(m.get("topk_tail", False)),
        max_response_tokens=int(m.max_response_tokens),
        teacher_sampling=Sampling(float(m.teacher_temperature), float(m.teacher_top_p)),
        samples_per_query=int(m.samples_per_query),
    )


def clm_targets(tok, cfg: ModelConfig, fmt: RawFormat, context: str, spec: sm.Spec) -> sm.Targets:
    """`causal_language_model` on raw text: `[start] (memory) context`, next-token targets on the context
    (as `sycomode.context_lm_targets`, which starts rows with the chat BOS instead of `fmt.start`)."""
    ids = encode(tok, context)
    if len(ids) < 2:
        raise sm.ConsolidationError("causal_language_model needs a context of at least two tokens")
    row = [fmt.start] + ids
    resp = row[1:]
    pos = np.arange(len(resp), dtype=np.int32)[None]  # position j predicts row[j + 1]
    t = -(-len(row) // 16) * 16
    tokens = np.full((1, t), cfg.pad_token_id or 0, np.int32)
    tokens[0, : len(row)] = row
    topk_idx = np.zeros((1, len(resp), spec.topk), np.int32)
    topk_lp = np.full((1, len(resp), spec.topk), -1e9, np.float32)
    topk_idx[0, :, 0] = resp
    topk_lp[0, :, 0] = 0.0
    targets = sm.Targets(tokens, pos, np.ones((1, len(resp)), np.float32), topk_idx, topk_lp)
    return with_memory(targets, spec.n_mem, cfg)


def consolidation_targets(
    params, cfg: ModelConfig, tok, fmt: RawFormat, context: str, probes: Sequence[str], spec: sm.Spec, seed: int = 0
) -> sm.Targets:
    """The student's training rows for `spec.objective` (teacher run once), memory tokens spliced in."""
    if spec.objective == "causal_language_model":
        return clm_targets(tok, cfg, fmt, context, spec)
    prompts = raw_prompts(tok, cfg, fmt, context, probes, 0)
    generated = spec.objective == "distill_on_generated_text"
    reps = spec.samples_per_query if generated else 1
    rep = sm.Prompts(prompts.teacher_prefix, prompts.teacher_suffix * reps, prompts.student * reps)
    responses = sm.teacher_responses(
        params,
        cfg,
        rep,
        max_new_tokens=spec.max_response_tokens,
        sampling=spec.teacher_sampling if generated else GREEDY,
        seed=seed,
        batch_size=len(rep.student),
    )
    targets = sm.teacher_targets(
        params, cfg, rep, responses, topk=spec.topk, temperature=spec.temperature, batch_size=min(8, len(rep.student))
    )
    return with_memory(targets, spec.n_mem, cfg)


def consolidate_raw(
    params,
    cfg: ModelConfig,
    tok,
    fmt: RawFormat,
    context: str,
    probes: Sequence[str],
    spec: sm.Spec,
    c: ml_collections.ConfigDict,
    seed: int = 0,
) -> tuple[dict, Adapters]:
    """Consolidate `context` and return the student as (params, adapters) ready for `row_logits`."""
    targets = consolidation_targets(params, cfg, tok, fmt, context, probes, spec, seed)
    ctx_ids = encode(tok, context)
    trainable = sm.init_trainable(params, cfg, spec, jax.random.key(seed), ctx_ids)
    frozen = {} if spec.method == "full" else {"base": params}
    tc = ml_collections.ConfigDict({k: c[k].to_dict() for k in ("optim", "train", "ckpt", "mesh", "logging")})
    arrays = targets.train_arrays()
    tc.train.batch_size = min(
        int(tc.train.batch_size), arrays["tokens"].shape[0]
    )  # train.seed stays: same compiled step
    workdir = tempfile.mkdtemp(prefix="sycomode_exp_")
    try:
        result = train(
            sm.make_loss_fn(cfg, spec, sm.loop_packing(targets, tc, enabled=bool(c.method.get("pack", True)))),
            trainable,
            frozen,
            ArrayIterator(arrays, tc.train.batch_size, seed=seed),
            tc,
            workdir,
            metadata={"experiment": True},
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    trainable = jax.device_get(result.trainable)
    return sm.student_params(params, trainable, cfg, spec)
