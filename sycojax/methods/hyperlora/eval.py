"""HyperLoRA on held-out test contexts: the KL gap it closes beside its controls and the optimised LoRA.

For each test context the rows are the consolidation's held-out rows: the teacher's (context as system turn)
greedy replies to held-out queries, its full distribution at every reply token (`sm.teacher_targets(full=True)`),
and the exact per-token KL(teacher‖student) of `sm.mean_kl`. Gap closed = (KL_before − KL) / KL_before, where
KL_before is the base without the context. Rows of the table:

    hyper          the generator's LoRA for this context
    unconditional  the generator's learned unconditional LoRA alone (no context read)
    wrong_context  the generator fed another test context's pooled states (a fixed derangement)
    optimised      `launch/consolidate.py --method=lora` (`consolidate.run`, a preset) on this context, held out
                   on the same queries (its own report: the same rows, since greedy replies are deterministic)
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import ml_collections
import numpy as np

from sycojax.methods import sycomode as sm
from sycojax.methods.hyperlora.generator import unconditional_lora
from sycojax.methods.hyperlora.spec import HyperConfig
from sycojax.methods.hyperlora.use import _generate, pooled_context
from sycojax.models import Adapters

ROWS = ("hyper", "unconditional", "wrong_context", "optimised")


def gap_closed(before: float, after: float) -> float:
    return (before - after) / before if before > 0 else 0.0


def derangement(n: int, seed: int) -> np.ndarray:
    """`wrong[i] != i` for every i (n >= 2): context i is fed context wrong[i]'s states."""
    perm = np.random.default_rng([seed, 11]).permutation(n)
    wrong = np.empty(n, np.int64)
    wrong[perm] = np.roll(perm, -1)
    return wrong


def evaluate_contexts(gen: dict, params, cfg, tok, hc: HyperConfig, contexts: Sequence[dict], queries: Sequence[str],
                      *, max_response_tokens: int, seed: int = 0, cache: Path | None = None, log=print) -> list[dict]:
    """One record per test context (KL before, KL and gap closed for hyper / unconditional / wrong_context, the
    seconds to read + generate its LoRA, compilation excluded). Records are kept in `cache` (JSON) as they come,
    so a resumed run does not redo them."""
    done = []
    for i, r in enumerate(json.loads(cache.read_text()) if cache is not None and cache.is_file() else []):
        if i >= len(contexts) or r.get("context") != contexts[i]["text"]:
            break
        done.append(r)
    pooled, gen_s = [], []
    for ctx in contexts:
        _generate(gen, pooled_context(params, cfg, tok, ctx["text"], hc), hc)  # compile this width once
        t0 = time.perf_counter()
        p = pooled_context(params, cfg, tok, ctx["text"], hc, log=log)
        jax.block_until_ready(_generate(gen, p, hc))
        gen_s.append(time.perf_counter() - t0)
        pooled.append(p)
    wrong = derangement(len(contexts), seed)
    uncond = Adapters(lora=unconditional_lora(gen), lora_scale=hc.lora.scale)
    out = list(done)
    for i in range(len(done), len(contexts)):
        ctx = contexts[i]
        prompts = sm.build_prompts(tok, cfg, ctx["text"], queries)
        sm.check_fits(cfg, prompts, max_response_tokens)
        responses = sm.teacher_responses(params, cfg, prompts, max_new_tokens=max_response_tokens,
                                         desc="teacher eval responses")
        targets = sm.teacher_targets(params, cfg, prompts, responses, topk=1, full=True, desc="teacher eval targets")
        kl = {"before": sm.mean_kl(params, Adapters(), cfg, targets)}
        for name, p in (("hyper", pooled[i]), ("wrong_context", pooled[wrong[i]])):
            kl[name] = sm.mean_kl(params, Adapters(lora=_generate(gen, p, hc), lora_scale=hc.lora.scale), cfg, targets)
        kl["unconditional"] = sm.mean_kl(params, uncond, cfg, targets)
        rec = {"kind": ctx["kind"], "context": ctx["text"], "context_tokens": len(tok(ctx["text"])["input_ids"]),
               "kl_before": kl["before"], "kl": {k: v for k, v in kl.items() if k != "before"},
               "gap_closed": {k: gap_closed(kl["before"], v) for k, v in kl.items() if k != "before"},
               "wrong_context_from": int(wrong[i]), "generate_s": gen_s[i],
               "eval_tokens": int(targets.resp_weights.sum())}
        out.append(rec)
        log(f"hyper/test {i + 1}/{len(contexts)} [{ctx['kind']}] KL before {kl['before']:.4f}: gap closed "
            + "  ".join(f"{k} {100 * v:5.1f}%" for k, v in rec["gap_closed"].items()))
        if cache is not None:
            cache.write_text(json.dumps(out, indent=1))
    for r, s in zip(out, gen_s):
        r["generate_s"] = s  # this run's timing
    return out


def optimised(records: list[dict], consolidation: ml_collections.ConfigDict, preset: str, queries: Sequence[str],
              workdir: Path, *, limit: int = 0, log=print) -> None:
    """`consolidate.run` (`--method=lora --preset=<preset>`) on each test context (the first `limit`, 0 = all),
    held out on the same `queries`; adds `kl["optimised"]`, `gap_closed["optimised"]`, `optimised_s` (its wall
    time) and `optimised_kl_before` (its own KL_before: the same rows, so the same number) to each record.
    Each run keeps its workdir (`<workdir>/<i>`), so a resumed evaluation reuses it."""
    from sycojax.methods import consolidate as cs  # noqa: PLC0415

    workdir.mkdir(parents=True, exist_ok=True)
    qfile = workdir / "eval_queries.txt"
    qfile.write_text("\n".join(queries) + "\n")
    for i, rec in enumerate(records[: limit or len(records)]):
        d = workdir / f"{i:02d}"
        report = d / cs.REPORT
        meta = d / "adapter" / "adapter.json"
        if report.is_file() and meta.is_file() and json.loads(meta.read_text()).get("context") == rec["context"]:
            r = json.loads(report.read_text())
        else:
            cc = copy.deepcopy(consolidation)
            cc.method.name = "lora"
            cs.apply_preset(cc, preset)
            cc.data.context, cc.data.context_file = rec["context"], ""
            cc.data.eval_queries_file, cc.data.num_eval_queries = str(qfile), len(queries)
            cc.eval.num_samples = 0
            cc.workdir = str(d)
            cc.logging.progress_bar = False
            r = cs.run(cc, overwrite=True, log=log)
        rec["kl"]["optimised"] = r["kl_after"]
        rec["gap_closed"]["optimised"] = gap_closed(rec["kl_before"], r["kl_after"])
        rec["optimised_kl_before"] = r["kl_before"]
        rec["optimised_s"] = r["timings_s"]["total"]
        rec["optimised_preset"] = preset
        log(f"hyper/optimised {i + 1}: KL before {r['kl_before']:.4f} (hyper eval: {rec['kl_before']:.4f}) -> "
            f"{r['kl_after']:.4f}: gap closed {100 * rec['gap_closed']['optimised']:.1f}% in {rec['optimised_s']:.0f}s")


def summarize(records: list[dict]) -> dict:
    """Median gap closed per row over the records that have it (optimised: those it ran on)."""
    out = {}
    for name in ROWS:
        vals = [r["gap_closed"][name] for r in records if name in r["gap_closed"]]
        out[name] = float(np.median(vals)) if vals else None
    return out


def summarize_optimised_subset(records: list[dict]) -> dict | None:
    """The medians over only the contexts the optimised LoRA ran on (when that is not all of them)."""
    sub = [r for r in records if "optimised" in r["gap_closed"]]
    if not sub or len(sub) == len(records):
        return None
    return dict(summarize(sub), n=len(sub))


def plot(records: list[dict], path: Path, title: str = "") -> Path:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    n = len(records)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * n + 2), 4.2))
    width = 0.2
    styles = {"hyper": "tab:blue", "optimised": "tab:green", "unconditional": "tab:gray", "wrong_context": "tab:red"}
    for j, name in enumerate(("hyper", "optimised", "unconditional", "wrong_context")):
        xs = [i + (j - 1.5) * width for i, r in enumerate(records) if name in r["gap_closed"]]
        ys = [r["gap_closed"][name] for r in records if name in r["gap_closed"]]
        if xs:
            ax.bar(xs, ys, width, label=name, color=styles[name])
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(range(n))
    ax.set_xticklabels([f"{i}:{r['kind']}" for i, r in enumerate(records)], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("KL gap closed (held-out queries)")
    ax.set_title(title or "HyperLoRA on held-out test contexts")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
