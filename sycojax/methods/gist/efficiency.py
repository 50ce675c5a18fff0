"""What the gist cache saves: compression ratio, KV bytes, analytic FLOPs (`sycojax.models.flops`) and
wall-clock per query with and without it, for one gist run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from sycojax.data.sources import require_nonempty
from sycojax.infer.gist_cache import GistCache, compress, decode, kv_bytes_per_token
from sycojax.methods.gist.data import encode_records
from sycojax.methods.gist.runs import GistRun
from sycojax.methods.gist.trees import lora_bytes, serving_trees
from sycojax.models import ModelConfig
from sycojax.models.flops import forward_flops


def _timed(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Run once to compile, then `repeats` timed runs (results blocked on); min and median seconds."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return {"min_s": min(times), "median_s": statistics.median(times)}


def measure_efficiency(
    run: GistRun, base: dict, cfg: ModelConfig, tokenizer: Any, records: Sequence[dict], *, gist_id: int,
    max_new_tokens: int = 128, batch_size: int = 8, max_length: int = 256, repeats: int = 3,
) -> dict[str, Any]:
    """Compression ratio, KV bytes, FLOPs and wall-clock per query with and without the gist cache, one run.

    "without": the whole gisted prompt is prefilled and its K/V kept (what serving the gist model — or the
    positive control — costs without caching); "with": the instruction was compressed beforehand (its cost
    reported separately as `compress`) and only the input is prefilled against the k gist K/V. Both are timed
    with the same jitted decoder (`gist_cache.decode`, fed `GistCache.empty` + the whole prompt for
    "without"), so only the cache differs.
    FLOPs are counted analytically (`sycojax.models.flops`: matmuls, causal visible keys). Wall-clock is
    measured on one batch of `batch_size` queries decoding exactly `max_new_tokens` tokens (no early stop),
    and for the prompt forward alone (one new token, as upstream's efficiency table), compilation excluded,
    min and median of `repeats` runs. KV bytes are fp32.
    """
    spec = run.spec
    k = spec.num_gist_tokens
    params, adapters = serving_trees(base, run.trainable, cfg, spec)
    examples, _ = encode_records(list(records)[:batch_size], tokenizer, spec, gist_id, with_completion=False,
                                 max_length=max_length)
    require_nonempty(examples, "examples for the efficiency measurement")
    n_prefix = np.array([len(ex.prefix) for ex in examples])
    n_suffix = np.array([len(ex.suffix) for ex in examples])
    n_instr = np.array([len(tokenizer(r["instruction"], add_special_tokens=False)["input_ids"])
                        for r in list(records)[: len(examples)]])
    bpt = kv_bytes_per_token(cfg)
    head = 2.0 * cfg.hidden_size * cfg.vocab_size

    def gen_flops(prompt: int, context: int) -> float:
        f = forward_flops(cfg, 1, prompt, context=context, logits=False) + head
        return f + sum(forward_flops(cfg, 1, 1, context=context + prompt + i) for i in range(max_new_tokens - 1))

    full_prompt = n_prefix + k + n_suffix
    flops = {
        "prompt_forward_without_cache": float(np.mean([forward_flops(cfg, 1, int(t), logits=False) + head
                                                       for t in full_prompt])),
        "prompt_forward_with_cache": float(np.mean([forward_flops(cfg, 1, int(s), context=k, logits=False) + head
                                                    for s in n_suffix])),
        "generation_without_cache": float(np.mean([gen_flops(int(t), 0) for t in full_prompt])),
        "generation_with_cache": float(np.mean([gen_flops(int(s), k) for s in n_suffix])),
        "compress_once": float(np.mean([forward_flops(cfg, 1, int(p) + k, logits=False) for p in n_prefix])),
    }
    flops["prompt_forward_saved_frac"] = 1 - flops["prompt_forward_with_cache"] / flops["prompt_forward_without_cache"]
    flops["generation_saved_frac"] = 1 - flops["generation_with_cache"] / flops["generation_without_cache"]

    chunk = list(examples) + [examples[-1]] * (batch_size - len(examples))
    cache = compress(params, cfg, [ex.prefix for ex in chunk], gist_id=gist_id, num_gist_tokens=k, adapters=adapters)
    none = GistCache.empty(cfg, len(chunk))

    def decoding(c: GistCache, rows: list, n: int) -> Callable[[], Any]:
        return lambda: decode(params, cfg, c, rows, max_new_tokens=n, adapters=adapters, eos_ids=()).tokens

    prompts, suffixes = [list(ex.prompt) for ex in chunk], [list(ex.suffix) for ex in chunk]
    t_without = _timed(decoding(none, prompts, max_new_tokens), repeats)
    t_with = _timed(decoding(cache, suffixes, max_new_tokens), repeats)
    p_without = _timed(decoding(none, prompts, 1), repeats)
    p_with = _timed(decoding(cache, suffixes, 1), repeats)
    t_compress = _timed(lambda: compress(params, cfg, [ex.prefix for ex in chunk], gist_id=gist_id, num_gist_tokens=k,
                                         adapters=adapters).k, repeats)
    wall = {
        "batch_size": batch_size, "new_tokens": max_new_tokens, "without_cache": t_without, "with_cache": t_with,
        "compress_batch": t_compress,
        "saved_frac_median": 1 - t_with["median_s"] / t_without["median_s"],
        "prompt_forward_without_cache": p_without,  # the prompt forward + first token only (as upstream's table)
        "prompt_forward_with_cache": p_with,
        "prompt_forward_saved_frac_median": 1 - p_with["median_s"] / p_without["median_s"],
    }
    kv = {
        "bytes_per_token": bpt,
        "instruction_kv_bytes": float(np.mean(n_prefix) * bpt),
        "gist_kv_bytes": k * bpt,
        "per_query_without_cache": float(np.mean(full_prompt + max_new_tokens) * bpt),
        "per_query_with_cache": float(np.mean(k + n_suffix + max_new_tokens) * bpt),
        "lora_bytes": {f"r{r}": lora_bytes(cfg, r, spec.lora.targets) for r in (2, 8, 16)},
    }
    return {
        "condition": run.name, "num_gist_tokens": k, "n": len(examples),
        "compression": {
            "mean_instruction_tokens": float(np.mean(n_instr)),
            "mean_prefix_tokens": float(np.mean(n_prefix)),  # template head + instruction: what the gist replaces
            "ratio_instruction": float(np.mean(n_instr) / k),
            "ratio_prefix": float(np.mean(n_prefix) / k),
            "max_ratio_prefix": float(np.max(n_prefix) / k),
        },
        "flops": flops, "wall_clock": wall, "kv": kv,
    }
