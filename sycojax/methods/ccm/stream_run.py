"""Streaming runs and streaming training for CCM (the scoring itself is `stream.py`).

`run_stream`        texts x methods -> per-method NLL / perplexity / entries kept (launch/stream_ccm.py)
`stream_layout`     CCM streaming unrolled into one sequence and one mask, so the recurrent computation trains in
                    one differentiable pass; `layout_nll`, `make_layout_loss` on it
`train_stream_run`  COMP tokens + conditional LoRA trained on windows of long texts through the shared loop
                    (configs/ccm_stream.py); writes a workdir `run.load_ccm` reads
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sycojax.methods.ccm import trees
from sycojax.methods.ccm.stream import (
    COMP,
    POSITIONS,
    RAW,
    SINK,
    STREAM_SOURCES,
    VARIANTS,
    StreamError,
    StreamResult,
    _nll,
    stream_nll,
    summarize,
)
from sycojax.methods.shared import refuse_occupied_workdir
from sycojax.models import ModelConfig, forward


def run_stream(*, ccm_workdir: str | None, methods: Sequence[str], budget: int = 160, chunk: int = 64,
               num_docs: int = 16, doc_tokens: int = 1024, source: str = "sharegpt", skip: int = 0,
               comp_size: int = 64, max_comp: int = 8, ccm_positions: str = "absolute", sinks: int = 4,
               batch: int = 8, model: str = "smollm2-135m-instruct", results_json: str | None = None,
               extra_ccm: Sequence[str] = (), log=print) -> dict:
    """Stream `num_docs` texts of `doc_tokens` tokens (after BOS) under each of `methods` (names of `VARIANTS`),
    then `ccm` with each CCM workdir of `extra_ccm` (rows `ccm@<workdir>`); returns (and writes to `results_json`
    after every method) the summary."""
    import json
    import time
    from pathlib import Path

    from tqdm import tqdm

    from sycojax.methods.ccm.run import CCMError, load_ccm
    from sycojax.models.loading import load_model
    from sycojax.models.tokenizer import load_tokenizer

    t_start = time.perf_counter()
    unknown = [m for m in methods if m not in VARIANTS]
    if unknown:
        raise StreamError(f"unknown method {unknown[0]!r}; use any of {', '.join(VARIANTS)}")
    if source not in STREAM_SOURCES:
        raise StreamError(f"source={source!r}: use one of {', '.join(STREAM_SOURCES)}")
    if ccm_positions not in POSITIONS:
        raise StreamError(f"ccm_positions={ccm_positions!r}: use one of {', '.join(POSITIONS)}")
    if doc_tokens % chunk or doc_tokens < chunk or budget < 1 or batch < 1 or num_docs < 1:
        raise StreamError(f"doc_tokens={doc_tokens} must be a positive multiple of chunk={chunk}; budget, batch "
                          "and num_docs must be >= 1")
    needs_ccm = any(VARIANTS[m][0] == "ccm" for m in methods) or bool(extra_ccm)
    if needs_ccm and budget < 1 + max_comp + comp_size:
        raise StreamError(f"budget {budget} < {1 + max_comp + comp_size}: ccm keeps 1 sink + {max_comp} COMP entries + "
                          f"a {comp_size}-token block to compress; raise --budget or lower --max_comp / --comp_size")
    if any(VARIANTS[m][0] == "streaming_llm" for m in methods) and budget <= sinks:
        raise StreamError(f"budget {budget} leaves no recent token beside streaming_llm's {sinks} sinks")
    trainable = spec = meta = None
    if needs_ccm:
        if not ccm_workdir:
            raise CCMError("ccm needs --ccm=<a launch/train_ccm.py workdir>")
        trainable, spec, meta = load_ccm(ccm_workdir)
        model = meta.get("model", model)
    cfg, params, info = load_model(model)
    if needs_ccm:
        try:
            trees.check_trees(trainable, spec, cfg)
        except ValueError as e:
            raise CCMError(f"--ccm {ccm_workdir}: {e}") from None
    extras = {}
    for w in extra_ccm:
        tr_w, spec_w, meta_w = load_ccm(w, cfg)
        if meta_w.get("model", model) != model:
            raise CCMError(f"--extra_ccm {w} was trained on {meta_w.get('model')!r}, not {model!r}")
        extras[f"ccm@{w}"] = (tr_w, spec_w)
    tok = load_tokenizer(model)
    streams = STREAM_SOURCES[source](tok, num_docs, doc_tokens + 1, skip=skip)
    log(f"{num_docs} streams of {doc_tokens + 1} tokens: {streams.source}")
    n_chunks = doc_tokens // chunk
    report = {
        "what": "streaming perplexity at a fixed K/V budget per layer (sycojax.methods.ccm.stream)",
        "model": model, "base_hash": info.content_hash, "budget": budget, "chunk": chunk, "n_docs": num_docs,
        "tokens_per_doc": doc_tokens + 1, "scored_tokens": num_docs * doc_tokens, "source": streams.source,
        "doc_ids": streams.ids, "streaming_llm_sinks": sinks,
        "ccm": None if not needs_ccm else {
            "workdir": str(ccm_workdir), "attn_type": spec.attn_type, "n_tok": spec.n_tok, "sink": 1,
            "comp_size": comp_size, "max_comp": spec.n_tok if spec.merge else max_comp, "positions": ccm_positions,
            "trained_on": (meta.get("config") or {}).get("data", {}).get("source")},
        "methods": {}, "device": jax.devices()[0].device_kind,
    }
    if extras:
        report["extra_ccm"] = {name: {"attn_type": sp.attn_type, "n_tok": sp.n_tok} for name, (_, sp) in extras.items()}
    runs = [(name, *VARIANTS[name], None) for name in methods] + [(n, "ccm", {}, e) for n, e in extras.items()]
    for name, method, kw, extra in runs:
        kw = dict(kw)
        if method == "ccm":
            tr_m, spec_m = extra or (trainable, spec)
            kw = {"trainable": tr_m, "spec": spec_m, "comp_size": comp_size, "max_comp": max_comp,
                  "positions": ccm_positions, **kw}
        if method == "streaming_llm":
            kw.setdefault("sinks", sinks)
        t0 = time.perf_counter()
        parts = []
        with tqdm(total=-(-num_docs // batch) * (1 if method == "full" else n_chunks), desc=name, leave=False) as bar:
            for i in range(0, num_docs, batch):
                parts.append(stream_nll(method, params, cfg, streams.tokens[i : i + batch], budget=budget,
                                        chunk=chunk, progress=bar.update, **kw))
                if method == "full":
                    bar.update(1)
        res = StreamResult(name, np.concatenate([p.nll for p in parts]), parts[0].entries, parts[0].memory)
        row = summarize([res], chunk)[name]
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        row["settings"] = {k: v for k, v in kw.items() if k not in ("trainable", "spec")}
        report["methods"][name] = row
        log(f"{name:<26} NLL {row['nll']:.4f}  ppl {row['ppl']:8.3f}  max entries {row['max_entries']:>5}  "
            f"({row['wall_s']:.0f}s)")
        report["wall_s"] = round(time.perf_counter() - t_start, 1)
        if results_json:
            Path(results_json).parent.mkdir(parents=True, exist_ok=True)
            Path(results_json).write_text(json.dumps(report, indent=2))
    m = report["methods"]
    if "ccm" in m and "sliding" in m and "streaming_llm" in m:
        report["ccm_below_baselines"] = bool(m["ccm"]["nll"] < min(m["sliding"]["nll"], m["streaming_llm"]["nll"]))
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    if results_json:
        Path(results_json).write_text(json.dumps(report, indent=2))
    return report


# --------------------------------------------------------------------------- the stream in one pass (training)


@dataclasses.dataclass(frozen=True)
class Layout:
    """CCM streaming (absolute positions, concat) unrolled into one sequence: every chunk's text, then the COMP
    groups made after it; `mask[q, k]` = element q sees element k exactly as `cached_nll` lets it (the state
    before its chunk + its chunk so far; a COMP token: sink, memory, the block it compresses, its group so far).
    So one forward under this mask computes the recurrent streaming computation, all of it differentiable."""

    tok: np.ndarray  # (E,) the stream index of a text element; -1 for COMP
    comp_j: np.ndarray  # (E,) j of a COMP element; -1 for text
    positions: np.ndarray  # (E,)
    mask: np.ndarray  # (E, E) bool
    memory: np.ndarray  # (E,) COMP entries a text element sees

    def rows(self, tokens: np.ndarray, cfg: ModelConfig, *, min_memory: int = 1) -> dict[str, np.ndarray]:
        """Element ids, next-token `targets` and `weights` (1 on text elements that see >= `min_memory` COMP
        entries and have a next token) for streams `tokens (N, T)`."""
        text = self.tok >= 0
        ids = np.where(text, tokens[:, np.maximum(self.tok, 0)], trees.comp_first_id(cfg) + self.comp_j)
        last = self.tok == tokens.shape[1] - 1
        targets = np.where(text & ~last, tokens[:, np.minimum(self.tok + 1, tokens.shape[1] - 1)], 0)
        weights = (text & ~last & (self.memory >= min_memory)).astype(np.float32)
        return {"tokens": ids.astype(np.int32), "targets": targets.astype(np.int32),
                "weights": np.broadcast_to(weights, ids.shape).copy()}


def stream_layout(length: int, *, budget: int, chunk: int, n_tok: int, comp_size: int, max_comp: int,
                  sinks: int = 1) -> Layout:
    """The one-pass layout of a `length`-token stream under `cached_nll`'s CCM policy (absolute positions)."""
    if (length - 1) % chunk:
        raise StreamError(f"a stream of {length} tokens is not n_chunks * chunk({chunk}) + 1")
    if budget < sinks + max_comp + comp_size or comp_size <= n_tok or max_comp % n_tok:
        raise StreamError(f"budget {budget}, comp_size {comp_size}, max_comp {max_comp}: need budget >= sinks + "
                          "max_comp + comp_size, comp_size > n_tok and max_comp a multiple of n_tok")
    n_chunks = (length - 1) // chunk
    tok, comp_j, pos, vis, mem = [], [], [], [], []
    state: list[tuple[int, int]] = []  # (element, kind), kept in arrival order
    for c in range(n_chunks):
        before = [e for e, _ in state]
        n_mem = sum(kind == COMP for _, kind in state)
        for i in range(c * chunk, (c + 1) * chunk):
            vis.append(before + list(range(len(tok) - (i - c * chunk), len(tok) + 1)))
            tok.append(i), comp_j.append(-1), pos.append(i), mem.append(n_mem)
            state.append((len(tok) - 1, SINK if i < sinks else RAW))
        if c == n_chunks - 1:
            break
        while len(state) > budget:
            src = [e for e, kind in state if kind == RAW][:comp_size]
            base = [e for e, kind in state if kind in (SINK, COMP)] + src
            first = len(tok)
            for j in range(n_tok):
                vis.append(base + list(range(first, first + j + 1)))
                tok.append(-1), comp_j.append(j), pos.append(pos[src[-1]] + j + 1), mem.append(0)
            state = [(e, k) for e, k in state if e not in set(src)] + [(first + j, COMP) for j in range(n_tok)]
            comps = [e for e, k in state if k == COMP]
            drop = set(comps[: max(0, len(comps) - max_comp)])
            state = [(e, k) for e, k in state if e not in drop]
        raws = [e for e, k in state if k == RAW]
        drop = set(raws[: max(0, len(state) - budget)])
        state = [(e, k) for e, k in state if e not in drop]
    mask = np.zeros((len(tok), len(tok)), bool)
    for q, keys in enumerate(vis):
        mask[q, keys] = True
    return Layout(np.array(tok), np.array(comp_j), np.array(pos), mask, np.array(mem))


def layout_nll(params, trainable, cfg: ModelConfig, spec: trees.CCMSpec, layout: Layout, rows: dict):
    """Per-element next-token NLL `(N, E)` of `Layout.rows` in one forward (0 where the weight is 0)."""
    tokens = jnp.asarray(rows["tokens"])
    b, e = tokens.shape
    is_comp = jnp.broadcast_to(jnp.asarray(layout.comp_j >= 0), (b, e))
    h = forward(params, tokens, cfg=cfg, positions=jnp.broadcast_to(jnp.asarray(layout.positions, jnp.int32), (b, e)),
                mask=jnp.broadcast_to(jnp.asarray(layout.mask)[None, None], (b, 1, e, e)),
                adapters=trees.adapters(trainable, spec, is_comp), return_logits=False).final_hidden
    scored = np.flatnonzero(np.asarray(rows["weights"]).max(0) > 0)  # the same elements in every row
    nll = _nll(params, cfg, h[:, scored], jnp.asarray(rows["targets"])[:, scored])
    return jnp.zeros((b, e)).at[:, scored].set(nll * jnp.asarray(rows["weights"])[:, scored])


def make_layout_loss(cfg: ModelConfig, spec: trees.CCMSpec, layout: Layout, scored: np.ndarray):
    """The training loss: mean NLL of the scored text elements (`scored`: their indices, the same in every row)
    of streams laid out by `layout`, COMP embeddings + conditional LoRA trainable, base frozen."""
    mask = jnp.asarray(layout.mask)[None, None]
    positions = jnp.asarray(layout.positions, jnp.int32)
    comp = jnp.asarray(layout.comp_j >= 0)
    idx = jnp.asarray(scored)

    def loss_fn(trainable, frozen, batch, rng):
        del rng
        tokens = batch["tokens"]
        b, e = tokens.shape
        h = forward(frozen["base"], tokens, cfg=cfg, positions=jnp.broadcast_to(positions, (b, e)),
                    mask=jnp.broadcast_to(mask, (b, 1, e, e)),
                    adapters=trees.adapters(trainable, spec, jnp.broadcast_to(comp, (b, e))),
                    return_logits=False).final_hidden
        loss = _nll(frozen["base"], cfg, h[:, idx], batch["targets"][:, idx]).mean()
        return loss, {"stream_nll": loss}

    return loss_fn


def train_stream_run(c, *, resume: bool = False, overwrite: bool = False, log=print) -> dict:
    """Train CCM's COMP tokens + conditional LoRA on streams laid out by `stream_layout` (configs/ccm_stream.py):
    windows of long texts, loss on the chunks that read a compressed memory; writes a `load_ccm` workdir."""
    import json
    import shutil
    import time
    from pathlib import Path

    from sycojax.adapters.export import save_tree
    from sycojax.methods.ccm.run import CCMError, load_ccm, spec_from_config
    from sycojax.models.loading import load_model
    from sycojax.models.tokenizer import load_tokenizer
    from sycojax.train import ArrayIterator, train

    t0 = time.perf_counter()
    spec = spec_from_config(c)
    if spec.merge:
        raise CCMError("streaming training lays out CCM-concat only; use method.attn_type=concat_recur")
    workdir = Path(c.workdir or "checkpoints/ccm_stream").resolve()
    refuse_occupied_workdir(workdir, resume, overwrite, CCMError)
    s = c.stream
    cfg, params, info = load_model(c.model.name)
    tok = load_tokenizer(c.model.name)
    length = int(s.train_chunks) * int(s.chunk) + 1
    layout = stream_layout(length, budget=int(s.budget), chunk=int(s.chunk), n_tok=spec.n_tok,
                           comp_size=int(s.comp_size), max_comp=int(s.max_comp))
    # whole texts chosen as the evaluation's are (>= eval_doc_tokens tokens), after skipping the first data.skip
    docs = STREAM_SOURCES[c.data.source](tok, int(c.data.num_docs), int(s.eval_doc_tokens) + 1, skip=int(c.data.skip))
    windows = []
    for row in docs.tokens:
        body = row[1:]
        for w in range(min(int(c.data.windows_per_doc), len(body) // (length - 1))):
            windows.append([row[0], *body[w * (length - 1) : (w + 1) * (length - 1)]])
    arrays = layout.rows(np.asarray(windows, np.int32), cfg)
    scored = np.flatnonzero(arrays["weights"][0] > 0)
    log(f"ccm stream: {len(windows)} windows of {length} tokens from {len(docs.ids)} texts ({docs.source}); "
        f"{len(layout.tok)} elements per row, loss on {len(scored)} tokens that read a compressed memory")
    if c.init_from:
        trainable, init_spec, _ = load_ccm(c.init_from, cfg)
        if init_spec.n_tok != spec.n_tok or init_spec.lora != spec.lora or init_spec.merge:
            raise CCMError(f"init_from={c.init_from} has n_tok={init_spec.n_tok}, lora={init_spec.lora}; the config "
                           f"asks for n_tok={spec.n_tok}, lora={spec.lora} (concat)")
    else:
        trainable = trees.init_trainable(params, cfg, spec, jax.random.key(int(c.train.seed)))
    if overwrite and workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    meta = {"base_model": info.id, "base_hash": info.content_hash, "method": "ccm", "n_tok": spec.n_tok,
            "attn_type": spec.attn_type, "lora_rank": spec.lora.rank, "lora_alpha": spec.lora.alpha,
            "lora_targets": list(spec.lora.targets), "sink": spec.sink}
    c.train.batch_size = min(int(c.train.batch_size), len(windows))
    result = train(make_layout_loss(cfg, spec, layout, scored), trainable, {"base": params},
                   ArrayIterator({k: arrays[k] for k in ("tokens", "targets")}, c.train.batch_size,
                                 seed=int(c.train.seed)), c, str(workdir), metadata=meta, resume=resume)
    trainable = jax.device_get(result.trainable)
    save_tree(trainable, workdir / "adapter", dict(meta, model=c.model.name, config=json.loads(c.to_json_best_effort())))
    report = {"model": c.model.name, "spec": dataclasses.asdict(spec), "windows": len(windows),
              "window_tokens": length, "elements": len(layout.tok), "scored_per_row": len(scored),
              "train_texts": docs.ids, "source": docs.source, "init_from": c.init_from or None, "steps": result.step,
              "loss_first": result.history[0].get("loss") if result.history else None,
              "loss_last": next((h.get("loss") for h in reversed(result.history) if "loss" in h), None),
              "wall_s": round(time.perf_counter() - t0, 1), "device": jax.devices()[0].device_kind,
              "outputs": {"workdir": str(workdir), "adapter": str(workdir / "adapter"),
                          "loss_curve": result.loss_curve, "metrics": result.metrics_path}}
    (workdir / "report.json").write_text(json.dumps(report, indent=2))
    report["outputs"]["report"] = str(workdir / "report.json")
    return report
