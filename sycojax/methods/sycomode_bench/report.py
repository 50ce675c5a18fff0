"""The bench's results: per-method summaries (`summarize`, against `TARGETS`), runs over disjoint context
sets joined into one (`merge_results`), the table as text and the KL curves as a plot.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sycojax.methods import sycomode as sm

TARGETS = {"lora": 0.85, "memory": 0.5}  # issue 3, Done-when 3: median held-out gap closed


def merge_results(parts: Sequence[Mapping[str, Any]]) -> dict:
    """One benchmark result from runs over disjoint context sets (e.g. one process or GPU per subset).

    The parts must share the model, its weights' hash, the device and every setting except
    `bench.contexts` / `bench.methods`; a context measured twice is an error. `wall_s` is the slowest part's
    (the parts ran side by side) and `parts` records how many there were.
    """
    if not parts:
        raise sm.ConsolidationError("nothing to merge: give the JSON files of at least one benchmark run")

    def key(r):
        st = json.loads(json.dumps(r["settings"]))
        st["bench"].pop("contexts", None)
        st["bench"].pop("methods", None)
        st.pop("methods", None)
        return (r["model"], r["base_hash"], r["device"], json.dumps(st, sort_keys=True))

    first = key(parts[0])
    for i, r in enumerate(parts[1:], 2):
        if key(r) != first:
            raise sm.ConsolidationError(
                f"part {i} was run with another model, device or settings than part 1: merge only runs of one "
                "command that differ in --contexts / --methods"
            )
    contexts, seen, methods = [], set(), {}
    for r in parts:
        for ctx in r["contexts"]:
            if ctx["name"] in seen:
                raise sm.ConsolidationError(f"context {ctx['name']!r} is in two parts; merge disjoint --contexts runs")
            seen.add(ctx["name"])
            contexts.append(ctx)
        for m, spec in r["settings"]["methods"].items():
            if methods.setdefault(m, spec) != spec:
                raise sm.ConsolidationError(f"method {m!r} has different settings in two parts")
    out = dict(parts[0])
    out["settings"] = json.loads(json.dumps(parts[0]["settings"]))
    out["settings"]["bench"]["contexts"] = ",".join(c["name"] for c in contexts)
    out["settings"]["bench"]["methods"] = ",".join(methods)
    out["settings"]["methods"] = methods
    out["contexts"] = contexts
    out["summary"] = summarize(contexts, list(methods))
    out["wall_s"] = max(float(r.get("wall_s", 0.0)) for r in parts)
    out["parts"] = len(parts)
    return out


def summarize(contexts: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per method: median / mean / min gap closed over contexts, behaviour transfers, ROUGE-L, time.

    `pooled_gap_closed = 1 − Σ KL_after / Σ KL_before` over contexts weighs each context by its gap, so
    a context the teacher barely follows (tiny KL before, noisy ratio) counts for little.

    `behaviour_ok` counts contexts whose behaviour transferred (see `behaviour_transfer`) out of the
    contexts where the check could see one (`behaviour_checkable`); `meets_target` compares the median
    gap closed with `TARGETS` (None for a method without a target).
    """
    out = {}
    for m in methods:
        rows = [ctx["methods"][m] for ctx in contexts if m in ctx["methods"]]
        if not rows:
            continue
        gaps = [r["gap_closed"] for r in rows if r["gap_closed"] is not None]
        oks = [r["behaviour"]["ok"] for r in rows if r["behaviour"]["ok"] is not None]
        med = statistics.median(gaps) if gaps else None
        out[m] = {
            "contexts": len(rows),
            "median_gap_closed": med,
            "mean_gap_closed": statistics.fmean(gaps) if gaps else None,
            "min_gap_closed": min(gaps) if gaps else None,
            "pooled_gap_closed": 1.0 - sum(r["kl_after"] for r in rows) / sum(r["kl_before"] for r in rows),
            "behaviour_ok": sum(oks),
            "behaviour_checkable": len(oks),
            "median_rouge_l_student": statistics.median(r["rouge_l_student"] for r in rows),
            "median_rouge_l_baseline": statistics.median(r["rouge_l_baseline"] for r in rows),
            "mean_prefill_tokens_saved": statistics.fmean(r["prefill_tokens_saved_per_query"] for r in rows),
            "mean_wall_s": statistics.fmean(r["wall_s"] for r in rows),
            "trainable_params": rows[0]["trainable_params"],
            "target": TARGETS.get(m),
            "meets_target": None if m not in TARGETS or med is None else bool(med >= TARGETS[m]),
        }
    return out


def _fmt_rate(r: float | None) -> str:
    return "  -" if r is None else f"{100 * r:3.0f}"


def format_table(result: Mapping[str, Any]) -> str:
    """The per-(context, method) table and the per-method summary, as fixed-width text."""
    head = (
        f"{'context':15s} {'method':7s} {'KL before':>9s} {'KL after':>9s} {'gap %':>6s} {'R-L s':>6s} "
        f"{'R-L b':>6s} {'beh T/S/B %':>13s} {'ok':>4s} {'saved':>6s} {'wall s':>7s} {'params':>11s}"
    )
    lines = [head, "-" * len(head)]
    for ctx in result["contexts"]:
        for m, r in ctx["methods"].items():
            b = r["behaviour"]
            ok = "-" if b["ok"] is None else ("yes" if b["ok"] else "no")
            beh = f"{_fmt_rate(b['teacher'])}/{_fmt_rate(b['student'])}/{_fmt_rate(b['baseline'])}"
            lines.append(
                f"{ctx['name']:15s} {m:7s} {r['kl_before']:9.4f} {r['kl_after']:9.4f} {100 * r['gap_closed']:6.1f} "
                f"{r['rouge_l_student']:6.1f} {r['rouge_l_baseline']:6.1f} {beh:>13s} {ok:>4s} "
                f"{r['prefill_tokens_saved_per_query']:6.1f} {r['wall_s']:7.0f} {r['trainable_params']:11,d}"
            )
    lines += [
        "",
        (
            f"{'method':7s} {'median gap %':>12s} {'mean gap %':>10s} {'min gap %':>9s} {'pooled %':>8s} "
            f"{'target %':>8s} "
            f"{'met':>4s} {'behaviour ok':>12s} {'R-L s/b':>11s} {'mean wall s':>11s}"
        ),
    ]
    for m, sm_ in result.get("summary", {}).items():
        tgt = "-" if sm_["target"] is None else f"{100 * sm_['target']:.0f}"
        met = "-" if sm_["meets_target"] is None else ("yes" if sm_["meets_target"] else "no")
        lines.append(
            f"{m:7s} {100 * sm_['median_gap_closed']:12.1f} {100 * sm_['mean_gap_closed']:10.1f} "
            f"{100 * sm_['min_gap_closed']:9.1f} {100 * sm_['pooled_gap_closed']:8.1f} {tgt:>8s} {met:>4s} "
            f"{sm_['behaviour_ok']:>5d}/{sm_['behaviour_checkable']:<6d} "
            f"{sm_['median_rouge_l_student']:5.1f}/{sm_['median_rouge_l_baseline']:<5.1f} {sm_['mean_wall_s']:11.0f}"
        )
    return "\n".join(lines)


def plot_kl(result: Mapping[str, Any], path: str | os.PathLike) -> str:
    """Held-out KL vs step per method: the mean over contexts (thick) and each context (thin), in nats
    (left) and relative to the no-context KL (right, = 1 − gap closed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    colors = {"lora": "tab:blue", "memory": "tab:orange", "full": "tab:green"}
    methods = list(result.get("summary") or {m: None for ctx in result["contexts"] for m in ctx["methods"]})
    for ax, relative in zip(axes, (False, True)):
        for m in methods:
            color = colors.get(m)
            curves = [dict(ctx["methods"][m]["kl_curve"]) for ctx in result["contexts"] if m in ctx["methods"]]
            if not curves:
                continue
            for cur in curves:
                xs = sorted(cur)
                ys = [cur[x] / cur[0] if relative else cur[x] for x in xs]
                ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
            steps = sorted(set.intersection(*(set(cur) for cur in curves)))
            mean = [float(np.mean([cur[x] / cur[0] if relative else cur[x] for cur in curves])) for x in steps]
            ax.plot(
                steps, mean, color=color, linewidth=2.5, marker="o", markersize=3, label=f"{m} (mean of {len(curves)})"
            )
        ax.set_xlabel("step")
        ax.set_ylabel("KL / KL before" if relative else "held-out KL(teacher‖student), nats/token")
        ax.set_title("relative to no context" if relative else "held-out KL")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"consolidation: {len(result['contexts'])} contexts, {result.get('model', '')}")
    fig.tight_layout()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    return path
