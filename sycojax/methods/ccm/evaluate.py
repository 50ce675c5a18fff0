"""CCM per turn on held-out conversations, beside its references (`launch/eval_ccm.py`; issue 20).

For every conversation and target turn t (1-based; turn t answers with O = turns[t-1] after I = turns[t-2],
and turns[:t-2] are the context), the mean NLL of `O EOS` given:

    full        the whole context uncompressed, `[BOS] c1 SEP ... SEP I SEP O` (one pass per conversation scores
                every turn: causal attention makes the turn-t logits those of the row cut after O(t))
    none        no context: `[BOS] I SEP O EOS`
    sliding     BOS + the most recent context tokens, as many K/V entries as ccm_concat holds at that turn
    ccm_concat  the recurrent memory: `memory.update` once per context turn, then `memory.score`
    ccm_merge   the same with merge_recur's fixed-size running mean
    gist        the whole context compressed at once into one COMP group, re-read from scratch every turn

The reference model for full / none / sliding is the `full` CCM kind (the LoRA fine-tuned on the same dialogs,
uncompressed) when one is given, else the frozen base; with a fine-tuned one the frozen base's figures are kept
too, as `full_base` / `none_base` / `sliding_base`. `memory_bytes` is the fp32 K/V each method holds for what
comes before I(t), all layers.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from sycojax.data.sources import EmptyDatasetError
from sycojax.methods.ccm import data as D
from sycojax.methods.ccm import loss as Lo
from sycojax.methods.ccm import memory as M
from sycojax.methods.ccm import trees
from sycojax.models import ModelConfig
from sycojax.objectives import token_nll


@dataclasses.dataclass(frozen=True)
class Ids:
    bos: int
    sep: int
    eos: int
    pad: int = 0


@dataclasses.dataclass
class Model:
    """A trained kind (`trees`, `spec`) or, with `trainable=None`, the frozen base."""

    trainable: dict | None
    spec: trees.CCMSpec


def read_conversations(path: str | Path) -> list[dict]:
    """`{"turns": [str, ...]}` per JSONL line (or one JSON list of them); one clear error per bad line."""
    p = Path(path)
    if not p.is_file():
        raise EmptyDatasetError(f"--conversations_file {p}: no such file")
    text = p.read_text(encoding="utf-8", errors="strict").strip()
    if not text:
        raise EmptyDatasetError(f"--conversations_file {p} is empty; write one {{\"turns\": [...]}} per line")
    items = json.loads(text) if text.startswith("[") else None
    lines = items if items is not None else text.splitlines()
    out = []
    for i, line in enumerate(lines, 1):
        try:
            d = line if isinstance(line, dict) else json.loads(line)
        except json.JSONDecodeError as e:
            raise EmptyDatasetError(f"--conversations_file {p} line {i}: not JSON ({e.msg}); write one "
                                    '{"turns": ["...", "..."]} per line') from None
        turns = d.get("turns") if isinstance(d, dict) else None
        if not isinstance(turns, list) or not all(isinstance(t, str) and t.strip() for t in turns):
            raise EmptyDatasetError(f"--conversations_file {p} line {i}: needs \"turns\": a list of non-empty strings")
        out.append({"id": str(d.get("id", i)), "turns": turns})
    return out


@functools.partial(jax.jit, static_argnames=("cfg", "spec"))
def _token_nll(params, trainable, tokens, valid, targets, *, cfg, spec):
    """(B, T) NLL of `targets[:, p]` at every position p, under `spec`'s forward (`trainable=None`: the base)."""
    return token_nll(Lo.logits_or_base(params, trainable, cfg, spec, tokens, valid), targets)


def _bucket(n: int, step: int = 32) -> int:
    return -(-n // step) * step


def score_rows(params, model: Model, cfg: ModelConfig, rows: Sequence[tuple[list[int], list[tuple[int, int]]]],
               *, eos: int, batch: int = 8) -> list[list[float]]:
    """For each `(tokens, spans)`, the mean NLL of each span's `(start, end)` targets: position p predicts
    `tokens[p+1]`, except that the last position of a span predicts EOS where the row goes on (the full-context
    row of a whole conversation)."""
    out: list[list[float]] = []
    for i in range(0, len(rows), batch):
        chunk = list(rows[i : i + batch])
        chunk += [chunk[-1]] * (batch - len(chunk))
        n = _bucket(max(len(t) for t, _ in chunk))
        tokens = np.zeros((batch, n), np.int32)
        valid = np.zeros((batch, n), bool)
        targets = np.zeros((batch, n), np.int32)
        for r, (t, spans) in enumerate(chunk):
            tokens[r, : len(t)], valid[r, : len(t)] = t, True
            targets[r, : len(t) - 1] = t[1:]
            for _, end in spans:  # the token after the span's last target is EOS
                targets[r, end - 1] = eos
        nll = np.asarray(_token_nll(params, model.trainable, jnp.asarray(tokens), jnp.asarray(valid),
                                    jnp.asarray(np.minimum(targets, cfg.vocab_size - 1)), cfg=cfg, spec=model.spec))
        for r, (_, spans) in enumerate(chunk[: min(batch, len(rows) - i)]):
            out.append([float(nll[r, s - 1 : e].mean()) for s, e in spans])  # p = s-1 predicts the span's first
    return out


def _context_stream(turns: Sequence[Sequence[int]], sep: int) -> list[int]:
    return [x for c in turns for x in (*c, sep)]


def reference_losses(params, model: Model, cfg, convs: Sequence[list[list[int]]], ids: Ids, max_turn: int,
                     entries: Callable[[int], int], batch: int = 8) -> dict[str, dict[int, list[float]]]:
    """full / none / sliding NLL per turn for every conversation (`entries(t)`: the sliding window at turn t)."""
    res: dict[str, dict[int, list[float]]] = {k: defaultdict(list) for k in ("full", "none", "sliding")}
    full_rows = []
    for c in convs:  # one row per conversation, a span per target turn
        tokens, spans = [ids.bos], []
        for t, turn in enumerate(c[:max_turn], 1):
            start = len(tokens)
            tokens += [*turn, ids.sep]
            if t >= 3:
                spans.append((start, start + len(turn)))
        tokens[-1] = ids.eos  # the last turn ends the row with EOS
        full_rows.append((tokens, spans))
    for c, nlls in zip(convs, score_rows(params, model, cfg, full_rows, eos=ids.eos, batch=batch)):
        for t, v in enumerate(nlls, 3):
            res["full"][t].append(v)
    short_rows, keys = [], []
    for c in convs:
        for t in range(3, min(len(c), max_turn) + 1):
            inp, out, ctx = c[t - 2], c[t - 1], c[: t - 2]
            tail = [*inp, ids.sep, *out, ids.eos]
            window = _context_stream(ctx, ids.sep)[-(entries(t) - 1) :] if entries(t) > 1 else []
            for name, head in (("none", [ids.bos]), ("sliding", [ids.bos, *window])):
                short_rows.append(([*head, *tail], [(len(head) + len(inp) + 1, len(head) + len(tail) - 1)]))
                keys.append((name, t))
    for (name, t), nll in zip(keys, score_rows(params, model, cfg, short_rows, eos=ids.eos, batch=batch)):
        res[name][t].append(nll[0])
    return res


def _pad_turn(c: Sequence[list[int]], i: int) -> list[int]:
    return c[i] if i < len(c) else c[-1]  # a finished conversation repeats its last turn; its scores are dropped


def recurrent_losses(params, model: Model, cfg, convs: Sequence[list[list[int]]], ids: Ids, max_turn: int,
                     batch: int = 8) -> tuple[dict[int, list[float]], dict[int, int]]:
    """NLL per turn from the recurrent memory (concat / merge), and its K/V bytes per conversation at each turn."""
    res, nbytes = defaultdict(list), {}
    for i in range(0, len(convs), batch):
        group = list(convs[i : i + batch])
        mem = M.CompressedMemory.empty(cfg, len(group))
        for t in range(3, min(max(len(c) for c in group), max_turn) + 1):
            mem = M.update(params, model.trainable, cfg, model.spec, mem, [_pad_turn(c, t - 3) for c in group],
                           bos=ids.bos, sep=ids.sep, pad=ids.pad)
            nll = M.score(params, model.trainable, cfg, model.spec, mem, [_pad_turn(c, t - 2) for c in group],
                          [_pad_turn(c, t - 1) for c in group], sep=ids.sep, eos=ids.eos, pad=ids.pad)
            res[t] += [float(v) for v, c in zip(nll, group) if t <= len(c)]
            nbytes[t] = mem.nbytes // len(group)
    return res, nbytes


def gist_losses(params, model: Model, cfg, convs: Sequence[list[list[int]]], ids: Ids, max_turn: int,
                batch: int = 8) -> tuple[dict[int, list[float]], dict[int, int]]:
    """NLL per turn when the whole context is compressed at once (every turn from scratch) into n_tok entries."""
    res, nbytes = defaultdict(list), {}
    for t in range(3, max_turn + 1):
        live = [c for c in convs if len(c) >= t]
        for i in range(0, len(live), batch):
            group = live[i : i + batch]
            ctx = [_context_stream(c[: t - 2], ids.sep)[:-1] for c in group]  # c1 SEP ... c(t-2)
            mem = M.update(params, model.trainable, cfg, model.spec, M.CompressedMemory.empty(cfg, len(group)), ctx,
                           bos=ids.bos, sep=ids.sep, pad=ids.pad)
            nll = M.score(params, model.trainable, cfg, model.spec, mem, [c[t - 2] for c in group],
                          [c[t - 1] for c in group], sep=ids.sep, eos=ids.eos, pad=ids.pad)
            res[t] += [float(v) for v in nll]
            nbytes[t] = mem.nbytes // len(group)
    return res, nbytes


def parity(params, model: Model, cfg, conv: Sequence[list[int]], ids: Ids) -> float:
    """Max |one-pass training logits − recurrent-inference logits| at the output positions of the conversation's
    last turn (every earlier turn but the input compressed)."""
    row = D.dialog_rows(conv, trees.group_ids(cfg, model.spec), bos=ids.bos, sep=ids.sep, eos=ids.eos,
                        max_len=10**6)[-1]
    tokens, valid = jnp.asarray([row.tokens]), jnp.ones((1, len(row.tokens)), bool)
    one_pass = Lo.ccm_forward_logits(params, model.trainable, cfg, model.spec, tokens, valid)
    one_pass = np.asarray(one_pass[0, row.loss_start - 1 : len(row.tokens) - 1])
    mem = M.CompressedMemory.empty(cfg, 1)
    for turn in conv[:-2]:
        mem = M.update(params, model.trainable, cfg, model.spec, mem, [turn], bos=ids.bos, sep=ids.sep)
    tail = [ids.sep, *conv[-2], ids.sep, *conv[-1], ids.eos]
    pos = mem.text_pos[:, None] + jnp.arange(len(tail))[None]
    logits, _ = M._run(params, model.trainable, cfg, model.spec, mem.k, mem.v, jnp.asarray([tail]),
                       jnp.ones((1, len(tail)), bool), jnp.zeros((1, len(tail)), bool), pos)
    return float(np.abs(np.asarray(logits[0, len(conv[-2]) + 1 : -1]) - one_pass).max())


def kv_bytes_per_entry(cfg: ModelConfig) -> int:
    return 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4


def summarise(loss: dict[str, dict[int, list[float]]], from_turn: int) -> dict:
    """Pooled means over every (conversation, turn >= from_turn), and CCM's share of the none → full gap."""
    pooled = {m: float(np.mean([v for t, vs in per.items() if t >= from_turn for v in vs]))
              for m, per in loss.items() if any(t >= from_turn for t in per)}
    gap = pooled.get("none", math.nan) - pooled.get("full", math.nan)
    out = {"from_turn": from_turn, "loss": pooled,
           "gap_recovered": {m: (pooled["none"] - v) / gap for m, v in pooled.items()
                             if m.startswith(("ccm", "gist", "sliding")) and not m.endswith("_base") and gap > 0}}
    if "full_base" in pooled and "none_base" in pooled and pooled["none_base"] > pooled["full_base"]:
        gb = pooled["none_base"] - pooled["full_base"]
        out["gap_recovered_vs_base"] = {m: (pooled["none_base"] - v) / gb for m, v in pooled.items()
                                        if m.startswith(("ccm", "gist"))}
    return out


def evaluate(params, cfg: ModelConfig, models: dict[str, Model], convs: Sequence[list[list[int]]], ids: Ids, *,
             max_turn: int, from_turn: int, batch: int = 8, log=print) -> dict:
    """Every method per turn: `models` maps `ccm_concat` (required), `ccm_merge`, `gist`, `full` to their kinds."""
    if "ccm_concat" not in models:
        raise ValueError("evaluate needs a ccm_concat model: the sliding window is sized by its memory")
    concat = models["ccm_concat"].spec
    per_entry = kv_bytes_per_entry(cfg)
    entries = lambda t: concat.n_tok * (t - 2) + int(concat.sink)  # noqa: E731  (ccm_concat's K/V at turn t)
    loss: dict[str, dict[int, list[float]]] = {}
    nbytes: dict[str, dict[int, float]] = {}
    timing: dict[str, float] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        timing[name] = round(time.perf_counter() - t0, 1)
        log(f"  {name}: {timing[name]:.0f} s")
        return out

    refs = [("", models.get("full", Model(None, concat)))] + ([("_base", Model(None, concat))] if "full" in models
                                                             else [])
    for suffix, model in refs:
        got = timed(f"references{suffix or ''}", lambda m=model: reference_losses(params, m, cfg, convs, ids, max_turn,
                                                                                  entries, batch))
        for k, v in got.items():
            loss[k + suffix] = v
    for name in ("ccm_concat", "ccm_merge"):
        if name in models:
            loss[name], nbytes[name] = timed(name, lambda m=models[name]: recurrent_losses(params, m, cfg, convs, ids,
                                                                                           max_turn, batch))
    if "gist" in models:
        loss["gist"], nbytes["gist"] = timed("gist", lambda: gist_losses(params, models["gist"], cfg, convs, ids,
                                                                         max_turn, batch))
    turns = sorted(loss["full"])
    ctx_len = {t: [1 + len(_context_stream(c[: t - 2], ids.sep)) for c in convs if len(c) >= t] for t in turns}
    for suffix, _ in refs:
        nbytes["full" + suffix] = {t: float(np.mean(ctx_len[t])) * per_entry for t in turns}
        nbytes["none" + suffix] = {t: float(per_entry) for t in turns}  # BOS
        nbytes["sliding" + suffix] = {t: float(np.mean([min(entries(t), n) for n in ctx_len[t]])) * per_entry
                                      for t in turns}
    parity_diff = max(parity(params, models[n], cfg, convs[0][:max_turn], ids) for n in ("ccm_concat", "ccm_merge")
                      if n in models)
    return {"loss": {m: {str(t): float(np.mean(v)) for t, v in sorted(per.items())} for m, per in loss.items()},
            "memory_bytes": {m: {str(t): int(b) for t, b in sorted(per.items())} for m, per in nbytes.items()},
            "count": {str(t): len(loss["full"][t]) for t in turns},
            "parity_max_abs_diff": parity_diff,
            "summary": summarise(loss, from_turn),
            "memory_ratio": {m: float(np.mean([nbytes[m][t] / nbytes["full"][t] for t in turns if t >= from_turn]))
                             for m in nbytes if m != "full"},
            "eval_s": timing}


def table(result: dict) -> list[str]:
    """Loss per turn (rows) and method (columns), then the summary over turns >= from_turn."""
    methods = list(result["loss"])
    lines = ["turn  " + " ".join(f"{m:>12}" for m in methods)]
    for t in result["count"]:
        lines.append(f"{t:>4}  " + " ".join(f"{result['loss'][m].get(t, math.nan):>12.3f}" for m in methods))
    s = result["summary"]
    lines.append(f"turns >= {s['from_turn']}: " + "  ".join(f"{m} {v:.3f}" for m, v in s["loss"].items()))
    lines.append("gap recovered (none -> full): " + "  ".join(f"{m} {100 * v:.1f}%" for m, v in
                                                                s["gap_recovered"].items()))
    lines.append("memory / full context: " + "  ".join(f"{m} {v:.3f}" for m, v in result["memory_ratio"].items()))
    return lines


def plot(result: dict, path: str | Path) -> str:
    """Loss vs turn per method (left) and K/V bytes vs turn (right, log scale)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    color = {m: f"C{i}" for i, m in enumerate(result["loss"])}  # one colour per method in both panels
    for ax, key, label in zip(fig.subplots(1, 2), ("loss", "memory_bytes"), ("next-turn NLL", "context K/V bytes")):
        for m, per in result[key].items():
            if per and not (key == "memory_bytes" and m.endswith("_base")):  # the base holds what its twin holds
                ax.plot([int(t) for t in per], list(per.values()), marker="o", markersize=3, label=m,
                        color=color.get(m), linestyle="--" if m.endswith("_base") or m == "gist" else "-")
        ax.set_xlabel("turn")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        if key == "memory_bytes":
            ax.set_yscale("log")
    fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return str(path)
