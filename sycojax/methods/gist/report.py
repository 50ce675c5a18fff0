"""Gisting's results as text (`format_table`, `format_efficiency`) and as the eval JSON files (`write_eval`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

EVAL_FILE = "eval.json"


EFFICIENCY_FILE = "eval_efficiency.json"


SAMPLES_FILE = "eval_samples.json"


OUTPUTS_FILE = "eval_outputs.json"


def format_table(table: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """The eval table as text: one row per (split, condition)."""

    def f(x, spec=".1f"):
        return "—" if x is None else format(x, spec)

    lines = [f"{'split':<8} {'condition':<12} {'n':>4} {'n_ref':>5} {'ROUGE-L':>8} {'vs pos':>7} {'loss':>7}"]
    for split, conds in table.items():
        for name, m in conds.items():
            lines.append(f"{split:<8} {name:<12} {m['n']:>4} {m['n_ref']:>5} {f(m['rougeL']):>8} "
                         f"{f(m['rougeL_vs_pos']):>7} {f(m['loss'], '.3f'):>7}")
    return "\n".join(lines)


def format_efficiency(eff: Mapping[str, Any]) -> str:
    """The efficiency measurement as text (one line per quantity)."""
    c, fl, w, kv = eff["compression"], eff["flops"], eff["wall_clock"], eff["kv"]
    k = eff["num_gist_tokens"]
    lora = ", ".join(f"{name} {b / 1e6:.1f} MB" for name, b in kv["lora_bytes"].items())

    def g(x):
        return f"{x / 1e9:.2f} G"

    def t(name):
        return f"{w[name]['median_s']:.3f} s (min {w[name]['min_s']:.3f})"

    lines = [
        f"efficiency ({eff['condition']}, split {eff.get('split', '?')}, {eff['n']} queries):",
        (f"  compression: {c['mean_instruction_tokens']:.1f} instruction tokens "
         f"({c['mean_prefix_tokens']:.1f} with the template head) -> {k} gist: {c['ratio_instruction']:.1f}x "
         f"({c['ratio_prefix']:.1f}x, max {c['max_ratio_prefix']:.0f}x)"),
        (f"  KV bytes: instruction {kv['instruction_kv_bytes'] / 1e3:.0f} kB"
         f" -> gist {kv['gist_kv_bytes'] / 1e3:.0f} kB;"
         f" per query {kv['per_query_without_cache'] / 1e6:.2f} -> {kv['per_query_with_cache'] / 1e6:.2f} MB;"
         f" a LoRA patch: {lora}"),
        (f"  FLOPs per query, prompt forward: {g(fl['prompt_forward_without_cache'])} -> "
         f"{g(fl['prompt_forward_with_cache'])} (-{100 * fl['prompt_forward_saved_frac']:.1f}%); "
         f"+{w['new_tokens']} new tokens: {g(fl['generation_without_cache'])} -> {g(fl['generation_with_cache'])} "
         f"(-{100 * fl['generation_saved_frac']:.1f}%); compress once: {g(fl['compress_once'])}"),
        (f"  wall-clock, batch {w['batch_size']}, prompt forward: {t('prompt_forward_without_cache')} -> "
         f"{t('prompt_forward_with_cache')} (-{100 * w['prompt_forward_saved_frac_median']:.1f}%)"),
        (f"  wall-clock, batch {w['batch_size']} x {w['new_tokens']} tokens: {t('without_cache')} -> "
         f"{t('with_cache')} (-{100 * w['saved_frac_median']:.1f}%); compress the batch once: {t('compress_batch')}"),
    ]
    return "\n".join(lines)


def write_eval(result: Mapping[str, Any], workdir: str | os.PathLike) -> dict[str, str]:
    """`eval.json` (the table), `eval_efficiency.json`, `eval_samples.json` (3 per split) and `eval_outputs.json`
    (every output, same rows) in `workdir`; returns their paths."""
    d = Path(workdir)
    d.mkdir(parents=True, exist_ok=True)
    paths = {"eval": d / EVAL_FILE, "samples": d / SAMPLES_FILE}
    paths["eval"].write_text(json.dumps(result["eval"], indent=2))
    paths["samples"].write_text(json.dumps(result["samples"], indent=2, ensure_ascii=False))
    if result.get("outputs") is not None:  # every greedy output (launch/eval_gist_lora.py --samples_json reads it)
        paths["outputs"] = d / OUTPUTS_FILE
        paths["outputs"].write_text(json.dumps(result["outputs"], indent=2, ensure_ascii=False))
    if result.get("efficiency") is not None:
        paths["efficiency"] = d / EFFICIENCY_FILE
        paths["efficiency"].write_text(json.dumps(result["efficiency"], indent=2))
    return {k: str(v) for k, v in paths.items()}
