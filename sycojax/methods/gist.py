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

Entry points: `train_run(config)` (launch/train_gist.py), `load_run(workdir)` + `evaluate(runs)`
(launch/eval_gist.py). Writes `<workdir>/ckpt/` (Orbax, via `sycojax.train.train`), `report.json`,
`metrics.jsonl`; evaluation writes `eval.json`, `eval_efficiency.json`, `eval_samples.json`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sycojax.adapters import LoraConfig, init_lora, merge_lora
from sycojax.adapters.lora import resolve_targets
from sycojax.bench.flops import forward_flops
from sycojax.data import (
    IGNORE_INDEX,
    PROMPT_FORMATS,
    GistExample,
    PromptTooLongError,
    alpaca_plus_splits,
    chat_pieces,
    collate_gist_batch,
    encode_gist_example,
)
from sycojax.data.sources import require_nonempty
from sycojax.eval.rouge import rouge_l
from sycojax.infer.generate import generate
from sycojax.infer.gist_cache import GistCache, compress, decode, kv_bytes_per_token
from sycojax.masks import GIST_CONDITIONS, gist_mask, positions_from_valid
from sycojax.models import Adapters, ModelConfig, forward
from sycojax.models.init import param_shapes
from sycojax.models.loading import load_model
from sycojax.models.model import _get
from sycojax.models.tokenizer import load_tokenizer
from sycojax.objectives import token_nll
from sycojax.train import ArrayIterator, train
from sycojax.train.inspection import CheckpointReader, NotACheckpointError

TRAIN_BASE = ("lora", "full")
EVAL_SPLITS = {"seen": "val_seen", "unseen": "val_unseen", "human": "val_human"}
REPORT = "report.json"
EVAL_FILE = "eval.json"
EFFICIENCY_FILE = "eval_efficiency.json"
SAMPLES_FILE = "eval_samples.json"
OUTPUTS_FILE = "eval_outputs.json"


class GistError(ValueError):
    """Bad input to a gisting run or its evaluation; the message names the fix."""


# --------------------------------------------------------------------------- spec + trees


@dataclasses.dataclass(frozen=True)
class GistSpec:
    """What a gisting run trains (static: part of the compiled loss)."""

    condition: str = "gist"  # gist | pos_control | neg_control
    num_gist_tokens: int = 1
    train_base: str = "lora"  # lora | full
    lora: LoraConfig = LoraConfig(rank=16, alpha=32.0, targets=("all",))
    fmt: str = "chatml"  # chatml | bare
    max_length: int = 256
    remat: bool | str = False  # forward(remat=...): False | True ("full") | "dots"

    def __post_init__(self):
        if self.condition not in GIST_CONDITIONS:
            raise GistError(f"unknown condition {self.condition!r}; choose one of {', '.join(GIST_CONDITIONS)}")
        if self.num_gist_tokens < 1:
            raise GistError(f"num_gist_tokens must be >= 1 (upstream: 1..10), got {self.num_gist_tokens}")
        if self.train_base not in TRAIN_BASE:
            raise GistError(f"unknown train_base {self.train_base!r}; choose one of {', '.join(TRAIN_BASE)}")
        if self.fmt not in PROMPT_FORMATS:
            raise GistError(f"unknown prompt format {self.fmt!r}; choose one of {', '.join(PROMPT_FORMATS)}")
        if self.max_length <= self.num_gist_tokens + 1:
            raise GistError(f"max_length={self.max_length} leaves no room for {self.num_gist_tokens} gist tokens")

    @property
    def name(self) -> str:
        """The condition's name in eval tables: `gist_<k>`, `pos_control`, `neg_control`."""
        return f"gist_{self.num_gist_tokens}" if self.condition == "gist" else self.condition

    @classmethod
    def from_config(cls, c: Mapping[str, Any]) -> GistSpec:
        """From a config (ConfigDict or the JSON dict saved with a checkpoint): its `method` and `data` sections."""
        m, d = c["method"], c["data"]
        targets = tuple(t.strip() for t in str(m["lora_targets"]).split(",") if t.strip())
        return cls(
            condition=str(m["condition"]), num_gist_tokens=int(m["num_gist_tokens"]), train_base=str(m["train_base"]),
            lora=LoraConfig(rank=int(m["lora_rank"]), alpha=float(m["lora_alpha"]), targets=targets),
            fmt=str(d["fmt"]), max_length=int(d["max_length"]), remat=m.get("remat", False),
        )


def gist_token_id(cfg: ModelConfig, tokenizer: Any = None) -> int:
    """`<GIST>` = the first id past the model's vocabulary (`cfg.vocab_size`)."""
    if tokenizer is not None and len(tokenizer) > cfg.vocab_size:
        raise GistError(
            f"the tokenizer has {len(tokenizer)} tokens but the model only {cfg.vocab_size} embedding rows; "
            "gist ids must lie past both"
        )
    return cfg.vocab_size


def init_trainable(params: dict, cfg: ModelConfig, spec: GistSpec, key: jax.Array) -> dict:
    """`{"gist": mean embedding (1, D), "lora": init_lora (B = 0)}` or `{"gist", "base": params}`."""
    table = _get(params, cfg.embed_path)
    gist = jnp.mean(jnp.asarray(table, jnp.float32), axis=0, keepdims=True)
    if spec.train_base == "full":
        return {"gist": gist, "base": jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)}
    return {"gist": gist, "lora": init_lora(params, cfg, spec.lora, key)}


def split_trees(base: dict | None, trainable: Mapping[str, Any], spec: GistSpec) -> tuple[dict, Adapters]:
    """(params to run, adapters) for a trainable tree: the base (or the trained full base) + gist (+ LoRA)."""
    if spec.train_base == "full":
        return trainable["base"], Adapters(embeddings=trainable["gist"])
    return base, Adapters(lora=trainable["lora"], embeddings=trainable["gist"], lora_scale=spec.lora.scale)


def serving_trees(base: dict | None, trainable: Mapping[str, Any], cfg: ModelConfig,
                  spec: GistSpec) -> tuple[dict, Adapters]:
    """For inference: LoRA merged into the base weights (`merge_lora`), only the gist row left as an adapter."""
    trainable = jax.tree.map(jnp.asarray, dict(trainable))
    params, adapters = split_trees(base, trainable, spec)
    if spec.train_base == "lora":
        params = merge_lora(params, adapters.lora, cfg, adapters.lora_scale)
    return params, Adapters(embeddings=adapters.embeddings)


def lora_bytes(cfg: ModelConfig, rank: int, targets: Sequence[str] = ("all",), itemsize: int = 4) -> int:
    """Bytes of a LoRA patch: `Σ_linears L · r · (in + out) · itemsize`."""
    root = "model" if cfg.arch == "llama" else "gpt_neox"
    names = resolve_targets(cfg, tuple(targets))
    total = 0
    for mods in param_shapes(cfg)[root]["layers"].values():
        for name, p in (mods.items() if isinstance(mods, dict) else []):
            if name in names and isinstance(p, dict) and "weight" in p:
                n, out_dim, in_dim = p["weight"]
                total += n * rank * (in_dim + out_dim)
    return total * itemsize


# --------------------------------------------------------------------------- loss


def completion_nll(
    params: dict, adapters: Adapters, batch: Mapping[str, Any], *, cfg: ModelConfig, gist_id: int, condition: str,
    remat: bool | str = False,
) -> tuple[jax.Array, jax.Array]:
    """`(Σ nll over completion tokens, number of completion tokens)` of a left-padded batch under `condition`.

    The loss is their ratio: the mean next-token cross-entropy (`token_nll`) of the completion, as
    `sycojax.objectives.causal_language_model` with `weights = [label ≠ IGNORE_INDEX]`; the sums let
    evaluation aggregate over batches exactly.

    batch: `tokens (B, T)`, `labels (B, T)` (IGNORE_INDEX off the completion, aligned with tokens), `valid (B, T)`.
    """
    tokens, labels, valid = batch["tokens"], batch["labels"], batch["valid"]
    mask = gist_mask(tokens, gist_id, valid, condition)
    out = forward(params, tokens, cfg=cfg, positions=positions_from_valid(valid), mask=mask, adapters=adapters,
                  remat=remat)
    targets = labels[:, 1:]
    weights = (targets != IGNORE_INDEX).astype(jnp.float32)
    nll = token_nll(out.logits[:, :-1], jnp.where(targets == IGNORE_INDEX, 0, targets))
    return jnp.sum(nll * weights), jnp.sum(weights)


def make_loss_fn(cfg: ModelConfig, spec: GistSpec, gist_id: int) -> Callable:
    """`loss_fn(trainable, frozen, batch, rng)` for `sycojax.train.train` (batch from `batch_arrays`)."""

    def loss_fn(trainable, frozen, batch, rng):
        del rng
        params, adapters = split_trees(frozen.get("base"), trainable, spec)
        total, count = completion_nll(params, adapters, batch, cfg=cfg, gist_id=gist_id, condition=spec.condition,
                                      remat=spec.remat)
        loss = total / jnp.maximum(count, 1.0)
        return loss, {"completion_ce": loss, "completion_tokens": count}

    return loss_fn


@functools.partial(jax.jit, static_argnames=("cfg", "gist_id", "condition"))
def _nll_sums(params, adapters, batch, *, cfg, gist_id, condition):
    return completion_nll(params, adapters, batch, cfg=cfg, gist_id=gist_id, condition=condition)


def mean_completion_loss(
    params: dict, adapters: Adapters, cfg: ModelConfig, examples: Sequence[GistExample], *, gist_id: int,
    condition: str, length: int, pad_id: int, batch_size: int = 8,
) -> float:
    """Teacher-forced loss per completion token over `examples` (fixed batch shape; padded rows count 0)."""
    require_nonempty(examples, "examples for the loss")
    tot, cnt = 0.0, 0.0
    for i in range(0, len(examples), batch_size):
        chunk = list(examples[i : i + batch_size])
        n_real = len(chunk)
        chunk += [chunk[-1]] * (batch_size - n_real)
        arrays = batch_arrays(chunk, pad_id=pad_id, length=length)
        arrays["labels"][n_real:] = IGNORE_INDEX
        batch = {k: jnp.asarray(arrays[k]) for k in ("tokens", "labels", "valid")}
        s, c = _nll_sums(params, adapters, batch, cfg=cfg, gist_id=gist_id, condition=condition)
        tot += float(s)
        cnt += float(c)
    return tot / max(cnt, 1.0)


# --------------------------------------------------------------------------- data


def encode_records(
    records: Sequence[dict], tok: Any, spec: GistSpec, gist_id: int, *, with_completion: bool = True,
    drop_too_long: bool = True, max_length: int | None = None, num_gist_tokens: int | None = None,
) -> tuple[list[GistExample], list[int]]:
    """Encode records in `spec.fmt` with k gist tokens; returns `(examples, indices of the records kept)`.

    A prompt that leaves no room for a completion token within `max_length` (default `spec.max_length`) is
    dropped with `drop_too_long`, else raises `PromptTooLongError`; completions are cut on the right.
    """
    require_nonempty(records, "records to encode")
    k = spec.num_gist_tokens if num_gist_tokens is None else num_gist_tokens
    limit = spec.max_length if max_length is None else max_length
    chat = chat_pieces(tok) if spec.fmt == "chatml" else None
    out, kept = [], []
    for i, r in enumerate(records):
        try:
            ex = encode_gist_example(r, tok, gist_id=gist_id, num_gist_tokens=k, fmt=spec.fmt, chat=chat,
                                     with_completion=with_completion, max_length=limit)
        except PromptTooLongError:
            if not drop_too_long:
                raise
            continue
        if not with_completion and len(ex.prompt) >= limit:  # keep room for one generated token
            if not drop_too_long:
                raise PromptTooLongError(f"record {i}: prompt of {len(ex.prompt)} tokens fills max_length={limit}")
            continue
        out.append(ex)
        kept.append(i)
    return out, kept


def batch_arrays(examples: Sequence[GistExample], *, pad_id: int, length: int) -> dict[str, np.ndarray]:
    """Left-padded arrays for `ArrayIterator` / the loss: tokens, labels, valid (B, length), num_tokens (B,)."""
    b = collate_gist_batch(examples, pad_id=pad_id, length=length)
    return {"tokens": b["tokens"], "labels": b["labels"], "valid": b["valid"],
            "num_tokens": b["valid"].sum(1).astype(np.int32)}


def splits_from_config(d: Mapping[str, Any]) -> dict[str, list[dict]]:
    """`alpaca_plus_splits` with the sizes and seed of a config's `data` section."""
    return alpaca_plus_splits(
        seed=int(d["seed"]), n_val_unseen=int(d["n_val_unseen"]), n_val_seen_per_task=int(d["n_val_seen_per_task"]),
        n_train_seen_per_task=None if int(d["n_train_seen_per_task"]) < 0 else int(d["n_train_seen_per_task"]),
    )


@dataclasses.dataclass
class TrainData:
    arrays: dict[str, np.ndarray]  # for ArrayIterator
    eval_examples: list[GistExample]  # held-out (val_unseen) examples for the loss during training
    num_records: int
    num_dropped: int


def build_train_data(
    splits: Mapping[str, Sequence[dict]], tok: Any, spec: GistSpec, gist_id: int, *, pad_id: int,
    drop_too_long: bool = True, max_train_examples: int = 0, num_eval_examples: int = 32,
) -> TrainData:
    """Encode the train split (prompts that do not fit `spec.max_length` dropped or an error) into fixed-shape
    arrays, plus the first `num_eval_examples` val_unseen examples for a held-out loss."""
    train = list(splits.get("train") or [])
    require_nonempty(train, "Alpaca+ split 'train'", "check the data sizes in the config")
    if max_train_examples > 0:
        train = train[:max_train_examples]
    examples, kept = encode_records(train, tok, spec, gist_id, drop_too_long=drop_too_long)
    if not examples:
        raise PromptTooLongError(
            f"none of the {len(train)} training prompts leaves room for {spec.num_gist_tokens} gist token(s) and a "
            f"completion within data.max_length={spec.max_length}; raise --config.data.max_length"
        )
    arrays = batch_arrays(examples, pad_id=pad_id, length=spec.max_length)
    heldout = [r for r in (splits.get("val_unseen") or []) if r.get("output")][: max(num_eval_examples, 0)]
    eval_examples = encode_records(heldout, tok, spec, gist_id)[0] if heldout else []
    return TrainData(arrays, eval_examples, len(train), len(train) - len(kept))


# --------------------------------------------------------------------------- a training run


def _pad_id(cfg: ModelConfig, tok: Any = None) -> int:
    for p in (cfg.pad_token_id, getattr(tok, "pad_token_id", None), *(cfg.eos_ids or ())):
        if p is not None:
            return int(p)
    return 0


def default_workdir(spec: GistSpec) -> str:
    return os.path.join("checkpoints", "gist", f"{spec.condition}_k{spec.num_gist_tokens}")


def run_metadata(info: Any, spec: GistSpec) -> dict[str, Any]:
    """Saved with every checkpoint; a resume with another k / condition / base is refused (`check_resume`)."""
    return {
        "method": "gist", "base_model": info.id, "base_hash": info.content_hash, "condition": spec.condition,
        "num_gist_tokens": spec.num_gist_tokens, "train_base": spec.train_base, "fmt": spec.fmt,
        "max_length": spec.max_length, "lora_rank": spec.lora.rank if spec.train_base == "lora" else None,
    }


def check_resume(workdir: str | os.PathLike, metadata: Mapping[str, Any]) -> None:
    """Refuse to resume a run trained with another k, condition, base or format (nothing is read but JSON)."""
    try:
        reader = CheckpointReader(str(workdir))
    except NotACheckpointError:
        return  # nothing to resume: the loop starts from step 0
    try:
        saved = reader.meta(reader.resolve_step(None)).get("metadata") or {}
    finally:
        reader.close()
    for key in ("method", "num_gist_tokens", "condition", "train_base", "fmt", "max_length", "lora_rank", "base_hash"):
        if saved.get(key) != metadata.get(key):
            raise GistError(
                f"cannot resume {workdir}: it was trained with {key}={saved.get(key)!r}, this run asks for "
                f"{key}={metadata.get(key)!r}; use the same settings, or a new --config.workdir"
            )


def train_run(
    c: ml_collections.ConfigDict, *, resume: bool = False, model: tuple | None = None, tokenizer: Any = None,
    splits: Mapping[str, Sequence[dict]] | None = None, log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train one condition through `sycojax.train.train`; writes `<workdir>/report.json` and returns it.

    `model=(cfg, params, info)`, `tokenizer` and `splits` replace `load_model(c.model.name)`,
    `load_tokenizer(...)` and `alpaca_plus_splits(...)` (tests).
    """
    t_start = time.perf_counter()
    spec = GistSpec.from_config(c)
    if model is None:
        model = load_model(c.model.name)
    if tokenizer is None:
        tokenizer = load_tokenizer(c.model.name)
    cfg, params, info = model
    gid = gist_token_id(cfg, tokenizer)
    pad = _pad_id(cfg, tokenizer)
    workdir = Path(c.workdir or default_workdir(spec)).resolve()
    metadata = run_metadata(info, spec)
    if resume:
        check_resume(workdir, metadata)
    splits = splits if splits is not None else splits_from_config(c.data)
    data = build_train_data(
        splits, tokenizer, spec, gid, pad_id=pad, drop_too_long=bool(c.data.drop_too_long),
        max_train_examples=int(c.data.max_train_examples), num_eval_examples=int(c.data.num_eval_examples),
    )
    n = data.arrays["tokens"].shape[0]
    log(f"gist run: condition={spec.condition} k={spec.num_gist_tokens} train_base={spec.train_base} fmt={spec.fmt}; "
        f"{n} training examples ({data.num_dropped} of {data.num_records} dropped: prompt longer than "
        f"max_length={spec.max_length}), {len(data.eval_examples)} held-out")
    if c.train.batch_size > n:
        raise GistError(f"train.batch_size={c.train.batch_size} exceeds the {n} training examples")

    trainable = init_trainable(params, cfg, spec, jax.random.key(int(c.train.seed)))
    frozen = {} if spec.train_base == "full" else {"base": params}
    curve: list[tuple[int, float]] = []

    def heldout_loss(tr) -> float:
        p, a = split_trees(frozen.get("base"), tr, spec)
        return mean_completion_loss(p, a, cfg, data.eval_examples, gist_id=gid, condition=spec.condition,
                                    length=spec.max_length, pad_id=pad, batch_size=int(c.train.batch_size))

    eval_fn = None
    if data.eval_examples:
        def eval_fn(tr, step):
            loss = heldout_loss(tr)
            curve.append((int(step), loss))
            return {"heldout_loss": loss}

        if not resume:
            curve.append((0, heldout_loss(trainable)))
            log(f"held-out completion loss before training: {curve[0][1]:.4f}")

    it = ArrayIterator(data.arrays, int(c.train.batch_size), seed=int(c.train.seed))
    result = train(make_loss_fn(cfg, spec, gid), trainable, frozen, it, c, str(workdir),
                   metadata=metadata, eval_fn=eval_fn, resume=resume)
    losses = [r["loss"] for r in result.history if "loss" in r]
    report = {
        "model": c.model.name, "base_hash": info.content_hash, "condition": spec.condition, "name": spec.name,
        "num_gist_tokens": spec.num_gist_tokens, "train_base": spec.train_base, "fmt": spec.fmt,
        "max_length": spec.max_length, "train_examples": int(n), "dropped_too_long": data.num_dropped,
        "steps": result.step, "final_train_loss": losses[-1] if losses else None, "heldout_loss_curve": curve,
        "trainable_params": int(sum(np.size(x) for x in jax.tree.leaves(result.trainable))),
        "compile": result.compile_stats, "time_s": round(time.perf_counter() - t_start, 1),
        "outputs": {"workdir": str(workdir), "ckpt": result.ckpt_dir, "metrics": result.metrics_path,
                    "loss_curve": result.loss_curve},
    }
    (workdir / REPORT).write_text(json.dumps(report, indent=2, default=str))
    report["outputs"]["report"] = str(workdir / REPORT)
    return report


# --------------------------------------------------------------------------- loading runs


@dataclasses.dataclass
class GistRun:
    """A trained condition read back from its checkpoint."""

    workdir: str
    step: int
    spec: GistSpec
    config: dict  # the resolved config saved with the checkpoint
    metadata: dict  # base model id + hash, condition, k, ...
    trainable: dict  # numpy tree {"gist", "lora" | "base"}

    @property
    def name(self) -> str:
        return self.spec.name


def load_run(
    workdir: str, *, num_gist_tokens: int | None = None, condition: str | None = None, step: int | None = None,
) -> GistRun:
    """The latest (or `step`) checkpoint of a gisting run; a run trained with another k or condition than
    the ones asked for is an error (the `<GIST>` row has the same shape for every k, so it would load silently).
    """
    reader = CheckpointReader(workdir)
    try:
        step = reader.resolve_step(step)
        meta = reader.meta(step)
        config = meta.get("config") or {}
        if (meta.get("metadata") or {}).get("method") != "gist" or "num_gist_tokens" not in config.get("method", {}):
            raise GistError(f"{workdir} holds a checkpoint of another method, not a gisting run (launch/train_gist.py)")
        spec = GistSpec.from_config(config)
        if num_gist_tokens is not None and num_gist_tokens != spec.num_gist_tokens:
            raise GistError(
                f"{workdir} was trained with num_gist_tokens={spec.num_gist_tokens}, not {num_gist_tokens}: a gist "
                f"model only understands the k it was trained with; evaluate it with "
                f"--num_gist_tokens={spec.num_gist_tokens} or train a run with k={num_gist_tokens}"
            )
        if condition is not None and condition != spec.condition:
            raise GistError(f"{workdir} was trained with condition={spec.condition}, but it was given as the "
                            f"{condition} run; pass it with the matching flag")
        trainable = reader.load(step)
    finally:
        reader.close()
    return GistRun(str(workdir), int(step), spec, config, meta.get("metadata") or {}, trainable)


# --------------------------------------------------------------------------- evaluation


def _batches(items: Sequence, size: int):
    """Fixed-size chunks (the last padded by repeating its last item) and the number of real items in each."""
    for i in range(0, len(items), size):
        chunk = list(items[i : i + size])
        n = len(chunk)
        yield chunk + [chunk[-1]] * (size - n), n


def gist_generate(
    params: dict, adapters: Adapters, cfg: ModelConfig, examples: Sequence[GistExample], *, gist_id: int,
    hide_gist: bool = False, max_new_tokens: int = 128, batch_size: int = 8,
) -> list[list[int]]:
    """Greedy outputs of gisted prompts from the gist cache: each distinct instruction compressed once."""
    k = len(examples[0].gist)
    prefixes = list(dict.fromkeys(ex.prefix for ex in examples))
    row_of = {p: i for i, p in enumerate(prefixes)}
    caches = []
    for chunk, n in _batches(prefixes, batch_size):
        c = compress(params, cfg, chunk, gist_id=gist_id, num_gist_tokens=k, adapters=adapters)
        caches.append(c.take(np.arange(n)))
    cache = GistCache.concatenate(caches)
    out: list[list[int]] = []
    for chunk, n in _batches(list(examples), batch_size):
        rows = cache.take([row_of[ex.prefix] for ex in chunk])
        g = decode(params, cfg, rows, [ex.suffix for ex in chunk], max_new_tokens=max_new_tokens, adapters=adapters,
                   hide_gist=hide_gist)
        out += g.rows()[:n]
    return out


def full_prompt_generate(
    params: dict, adapters: Adapters, cfg: ModelConfig, examples: Sequence[GistExample], *,
    max_new_tokens: int = 128, batch_size: int = 8,
) -> list[list[int]]:
    """Greedy outputs with the whole prompt visible (pos_control; also gist without a cache, for timing)."""
    out: list[list[int]] = []
    for chunk, n in _batches(list(examples), batch_size):
        g = generate(params, cfg, [ex.prompt for ex in chunk], max_new_tokens=max_new_tokens, adapters=adapters)
        out += g.rows()[:n]
    return out


def _check_runs(runs: Sequence[GistRun]) -> None:
    """Runs compared in one table: distinct conditions, one base model, one prompt format, one split."""
    if not runs:
        raise GistError("no runs to evaluate: pass --workdir, or --gist_workdir / --pos_workdir / --neg_workdir")
    names = [r.name for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise GistError(f"two runs evaluate as the same condition {dup}: {[r.workdir for r in runs]}")
    first = runs[0]
    for r in runs[1:]:
        if r.metadata.get("base_hash") != first.metadata.get("base_hash"):
            raise GistError(f"{r.workdir} and {first.workdir} were trained on different base models")
        if r.spec.fmt != first.spec.fmt:
            raise GistError(f"{r.workdir} uses the {r.spec.fmt!r} prompt format, {first.workdir} {first.spec.fmt!r}: "
                            "conditions are only comparable on the same prompts")
        fields = ("seed", "n_val_unseen", "n_val_seen_per_task", "n_train_seen_per_task")
        a = {f: first.config.get("data", {}).get(f) for f in fields}
        b = {f: r.config.get("data", {}).get(f) for f in fields}
        if a != b:
            raise GistError(
                f"{r.workdir} and {first.workdir} used different Alpaca+ splits ({b} vs {a}): their held-out "
                "splits differ, so they cannot be compared"
            )


def evaluate(
    runs: Sequence[GistRun],
    *,
    splits: Sequence[str] = ("seen", "unseen", "human"),
    num_examples: int = 100,
    max_new_tokens: int = 128,
    batch_size: int = 8,
    max_length: int | None = None,
    efficiency: bool = True,
    efficiency_split: str = "human",
    timing_repeats: int = 3,
    model: tuple | None = None,
    tokenizer: Any = None,
    data_splits: Mapping[str, Sequence[dict]] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Greedy decoding + ROUGE-L + teacher-forced loss per split and condition; efficiency of the gist cache.

    Every condition sees the same examples: the first `num_examples` of each split whose prompt fits
    `max_length` (default: the first run's `data.max_length`) with the largest k among the runs.
    Returns `{"eval": {split: {condition: {"rougeL", "rougeL_vs_pos", "n", "n_ref", "loss"}}},
    "efficiency": {...} | None, "samples": {...}}`. `rougeL` is against the reference outputs (over the
    `n_ref` examples that have one; None when none has), `rougeL_vs_pos` against the pos_control run's
    outputs (None without a pos_control run), `loss` the teacher-forced loss per completion token on the
    references (None without references).
    """
    _check_runs(runs)
    if num_examples < 1:
        raise GistError(f"num_examples must be >= 1, got {num_examples}")
    unknown = [s for s in splits if s not in EVAL_SPLITS]
    if unknown or not splits:
        raise GistError(f"unknown split(s) {unknown or splits}; choose among {', '.join(EVAL_SPLITS)}")
    first = runs[0]
    if model is None:
        model = load_model(first.config["model"]["name"])
    if tokenizer is None:
        tokenizer = load_tokenizer(first.config["model"]["name"])
    cfg, base, info = model
    for r in runs:
        if r.metadata.get("base_hash") and r.metadata["base_hash"] != info.content_hash:
            raise GistError(f"{r.workdir} was trained on a base with hash {r.metadata['base_hash']}, but the model "
                            f"loads as {info.content_hash}; evaluate with the same base model")
    gid = gist_token_id(cfg, tokenizer)
    pad = _pad_id(cfg, tokenizer)
    data_splits = data_splits if data_splits is not None else splits_from_config(first.config["data"])
    limit = int(max_length or first.spec.max_length)
    k_max = max(r.spec.num_gist_tokens for r in runs)
    probe = dataclasses.replace(first.spec, num_gist_tokens=k_max, max_length=max(limit, k_max + 2))

    # the examples every condition is scored on
    chosen: dict[str, list[dict]] = {}
    for split in splits:
        records = list(data_splits.get(EVAL_SPLITS[split]) or [])[:num_examples]
        if not records:
            raise GistError(f"split {split!r} ({EVAL_SPLITS[split]}) is empty; check the data sizes in the config")
        _, kept = encode_records(records, tokenizer, probe, gid, with_completion=False, max_length=limit)
        if not kept:
            raise GistError(f"no prompt of split {split!r} fits max_length={limit} with {k_max} gist token(s); "
                            "raise --max_length")
        chosen[split] = [records[i] for i in kept]
        log(f"{split}: {len(kept)} of {len(records)} examples fit max_length={limit}")

    dec = functools.partial(tokenizer.decode, skip_special_tokens=True)
    outputs: dict[str, dict[str, list[str]]] = {s: {} for s in splits}
    losses: dict[str, dict[str, float | None]] = {s: {} for s in splits}
    for run in runs:
        spec = run.spec
        params, adapters = serving_trees(base, run.trainable, cfg, spec)
        for split in splits:
            records = chosen[split]
            examples, _ = encode_records(records, tokenizer, spec, gid, with_completion=False, drop_too_long=False,
                                         max_length=limit)
            t0 = time.perf_counter()
            if spec.condition == "pos_control":
                ids = full_prompt_generate(params, adapters, cfg, examples, max_new_tokens=max_new_tokens,
                                           batch_size=batch_size)
            else:
                ids = gist_generate(params, adapters, cfg, examples, gist_id=gid,
                                    hide_gist=spec.condition == "neg_control",
                                    max_new_tokens=max_new_tokens, batch_size=batch_size)
            outputs[split][run.name] = [dec(x).strip() for x in ids]
            with_ref = [r for r in records if r.get("output")]
            loss = None
            if with_ref:
                ex_ref, _ = encode_records(with_ref, tokenizer, spec, gid, drop_too_long=False, max_length=limit)
                loss = mean_completion_loss(params, adapters, cfg, ex_ref, gist_id=gid, condition=spec.condition,
                                            length=limit, pad_id=pad, batch_size=batch_size)
            losses[split][run.name] = loss
            log(f"{split}/{run.name}: {len(records)} outputs in {time.perf_counter() - t0:.1f}s"
                + (f", loss {loss:.4f}" if loss is not None else ""))

    table: dict[str, dict[str, dict[str, Any]]] = {}
    pos = next((r.name for r in runs if r.spec.condition == "pos_control"), None)
    for split in splits:
        records = chosen[split]
        ref_idx = [i for i, r in enumerate(records) if r.get("output")]
        table[split] = {}
        for run in runs:
            preds = outputs[split][run.name]
            table[split][run.name] = {
                "rougeL": rouge_l([preds[i] for i in ref_idx],
                                  [records[i]["output"] for i in ref_idx]) if ref_idx else None,
                "rougeL_vs_pos": rouge_l(preds, outputs[split][pos]) if pos else None,
                "n": len(records),
                "n_ref": len(ref_idx),
                "loss": losses[split][run.name],
            }
    every = {
        split: [
            {"instruction": r["instruction"], "input": r["input"], "reference": r.get("output"),
             **{run.name: outputs[split][run.name][i] for run in runs}}
            for i, r in enumerate(chosen[split])
        ]
        for split in splits
    }
    samples = {split: rows[:3] for split, rows in every.items()}
    eff = None
    gist_runs = sorted((r for r in runs if r.spec.condition == "gist"), key=lambda r: r.spec.num_gist_tokens)
    if efficiency and gist_runs:
        eff_split = efficiency_split if efficiency_split in chosen else splits[0]
        eff = measure_efficiency(gist_runs[0], base, cfg, tokenizer, chosen[eff_split], gist_id=gid,
                                 max_new_tokens=max_new_tokens, batch_size=batch_size, max_length=limit,
                                 repeats=timing_repeats)
        eff["split"] = eff_split
    return {"eval": table, "efficiency": eff, "samples": samples, "outputs": every}


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
    FLOPs are counted analytically (`sycojax.bench.flops`: matmuls, causal visible keys). Wall-clock is
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


# --------------------------------------------------------------------------- reporting


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


__all__ = [
    "GistError", "GistRun", "GistSpec", "TrainData", "batch_arrays", "build_train_data",
    "completion_nll", "encode_records", "evaluate", "format_efficiency", "format_table", "gist_generate",
    "gist_token_id", "init_trainable", "load_run", "lora_bytes", "make_loss_fn", "mean_completion_loss",
    "measure_efficiency", "serving_trees", "split_trees", "train_run", "write_eval",
]
