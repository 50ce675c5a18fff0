"""`train`: the one training loop of sycojax, generic over methods.

A method supplies a loss and its trees; the loop owns everything else::

    result = train(loss_fn, trainable, frozen, data, cfg, workdir, metadata={...}, eval_fn=None, resume=False)

    loss_fn(trainable, frozen, batch, rng) -> (loss: fp32 scalar, metrics: dict[str, scalar])
        pure and jittable. `trainable` arrives cast to `train.compute_dtype`; `frozen` arrives as
        given; `batch` is ONE micro-batch (leading dim train.batch_size / train.grad_accum) on
        device; `rng` is a typed `jax.random` key, different for every micro-batch and step.
    trainable: pytree of fp32 arrays that train (LoRA tree, memory tokens, or full base params).
    frozen:    pytree of arrays that does not train; never checkpointed (name it in `metadata`).
    data:      iterator of GLOBAL batches (dict of numpy arrays, leading dim train.batch_size), the
               same stream on every process, with `get_state()` / `set_state()` (JSON-able dicts),
               e.g. `sycojax.train.ArrayIterator`. Tokens/s comes from the batch: an int
               `num_tokens` entry (summed), else the size of a `tokens` entry, else not shown.
    cfg:       ConfigDict with the sections of `sycojax.train.config.default_config`; the method's
               own sections are kept and saved too.
    metadata:  JSON-able dict (base model id, content hash, ...) saved with every checkpoint; a
               resume with different metadata is refused.
    eval_fn(trainable, step) -> dict of scalars, every train.eval_every steps and at the end.

One step, in order: host batch -> micro-batch layout `(A, B/A, ...)` -> each process hands its rows
to `jax.make_array_from_process_local_data` -> the AOT-compiled step (grad accumulation scan, optax
update; trainable / optimizer state / step counter donated) -> `between_steps` (host state, may replace
the frozen tree) -> metrics kept on device until the next logging step -> every `ckpt.every` steps an
async Orbax save (then `on_save`) -> every `eval_every` steps eval.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from tqdm import tqdm

from sycojax.train import sharding as shd
from sycojax.train.checkpoint import RunCheckpoints, UnreadableCheckpointError, ckpt_dir
from sycojax.train.config import check_values, config_to_json, config_to_jsonable, resolve_config
from sycojax.train.metrics import LOSS_PNG, METRICS_FILE, MetricsWriter, plot_loss_curves, truncate_jsonl
from sycojax.train.optim import make_optimizer
from sycojax.train.step import LossFn, compute_dtype, make_train_step

COMPILE_FILE = "compile.json"
CONFIG_FILE = "config.json"


@dataclasses.dataclass
class TrainResult:
    trainable: Any  # the final trainable tree (global jax Arrays, fp32)
    step: int  # optimizer updates applied in total (including those before a resume)
    history: list[dict[str, Any]]  # the records this call wrote (train steps and evals)
    workdir: str
    ckpt_dir: str
    metrics_path: str
    tensorboard_dir: str
    loss_curve: str | None
    batch_sharding: jax.sharding.Sharding | None = None  # sharding of the batch arrays fed to the step
    compile_stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    opt_state: Any = None  # the final optimizer state (placed like the trainable tree)


def count_tokens(batch: Mapping[str, np.ndarray]) -> int | None:
    """Tokens in a global batch: sum of `num_tokens` if present, else `tokens.size`, else None."""
    if "num_tokens" in batch:
        return int(np.sum(batch["num_tokens"]))
    if "tokens" in batch:
        return int(np.size(batch["tokens"]))
    return None


def _next_batch(data: Any, batch_size: int, step: int) -> dict[str, np.ndarray]:
    try:
        batch = next(data)
    except StopIteration:
        raise RuntimeError(
            f"the data iterator ran out before step {step}; the loop needs an endless iterator "
            "(ArrayIterator repeats epochs) or train.num_steps within the data"
        ) from None
    return _check_batch(batch, batch_size)


def _check_batch(batch: Any, batch_size: int) -> dict[str, np.ndarray]:
    if not isinstance(batch, Mapping):
        raise TypeError(f"the data iterator must yield dicts of arrays, got {type(batch).__name__}")
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.ndim == 0 or v.shape[0] != batch_size:
            raise ValueError(
                f"batch[{k!r}] has shape {v.shape}; every batch entry needs leading dimension "
                f"train.batch_size={batch_size} (the global batch)"
            )
        out[k] = v
    return out


def compile_stats(compiled: Any) -> dict[str, Any]:
    """Memory analysis (bytes) and FLOP estimate of an AOT-compiled step, where the backend reports them."""
    stats: dict[str, Any] = {}
    try:
        ma = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        ma = None
    if ma is not None:
        for name in dir(ma):
            if name.endswith("_in_bytes"):
                stats[name] = int(getattr(ma, name))
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        if cost and "flops" in cost:
            stats["flops"] = float(cost["flops"])
    except Exception as e:  # noqa: BLE001 - not every backend implements it
        logging.info("no cost analysis: %s", e)
    return stats


def _jsonable(d: Mapping[str, Any] | None) -> dict[str, Any]:
    return json.loads(json.dumps(dict(d or {}), default=str))


def _param_count(tree: Any) -> int:
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(tree)))


def train(
    loss_fn: LossFn,
    trainable: Any,
    frozen: Any,
    data: Any,
    cfg: ml_collections.ConfigDict | dict,
    workdir: str,
    metadata: Mapping[str, Any] | None = None,
    eval_fn: Callable[[Any, int], Mapping[str, Any]] | None = None,
    resume: bool = False,
    *,
    param_rules: shd.Rules = shd.PARAM_RULES,
    mesh: jax.sharding.Mesh | None = None,
    between_steps: Callable[[int, Any, Mapping[str, np.ndarray]], Any] | None = None,
    on_save: Callable[[int], None] | None = None,
) -> TrainResult:
    """Train `trainable` for `cfg.train.num_steps` optimizer updates (see the module docstring).

    `resume=True` continues from the latest checkpoint in `<workdir>/ckpt` (exactly: same losses as
    an uninterrupted run) or starts from scratch when there is none; `resume=False` on a workdir
    that already holds checkpoints is an error. `param_rules` (see `sycojax.train.sharding`) place
    the trainable and frozen leaves; `mesh` defaults to `make_mesh(cfg.mesh)`.

    State that lives beside the trees (a kNN memory store written as the model trains):
    `between_steps(step, trainable, host_batch)` runs after every optimizer update with the updated
    trainable tree and that step's global host batch, and returns a new frozen tree (same structure,
    shapes and dtypes, so the compiled step is reused) or None to keep it; `on_save(step)` runs
    right after the checkpoint of `step` is handed to Orbax (to commit that state with it).
    """
    cfg = resolve_config(cfg)
    tc = cfg.train
    num_steps, accum, batch_size = int(tc.num_steps), int(tc.grad_accum), int(tc.batch_size)
    check_values(cfg)
    if accum < 1 or batch_size % accum:
        raise ValueError(f"train.batch_size={batch_size} must be a multiple of train.grad_accum={accum}")
    metadata = _jsonable(metadata)
    mesh = mesh if mesh is not None else shd.make_mesh(cfg.mesh.to_dict())
    dp = shd.data_parallel_size(mesh)
    if (batch_size // accum) % dp:
        raise ValueError(
            f"each micro-batch holds train.batch_size / train.grad_accum = {batch_size // accum} rows, which must "
            f"be divisible by the data-parallel devices mesh.data * mesh.fsdp = {dp}"
        )
    bad = [
        shd.path_str(p)
        for p, x in jax.tree_util.tree_leaves_with_path(trainable)
        if not jnp.issubdtype(jnp.result_type(x), jnp.floating)
    ]
    if bad:
        raise TypeError(f"trainable leaves must be floating point (fp32 master weights); not: {bad[:5]}")

    is_main = jax.process_index() == 0
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    tx, schedule = make_optimizer(cfg.optim, num_steps)
    dtype = compute_dtype(tc.compute_dtype)
    config_json = config_to_jsonable(cfg)
    paths = {
        "workdir": workdir,
        "ckpt_dir": ckpt_dir(workdir),
        "metrics_path": os.path.join(workdir, METRICS_FILE),
        "tensorboard_dir": os.path.join(workdir, "tensorboard"),
    }

    with jax.set_mesh(mesh):
        rep = shd.replicated(mesh)
        t_sh = shd.tree_shardings(trainable, mesh, param_rules)
        f_sh = shd.tree_shardings(frozen, mesh, param_rules)
        trainable = shd.put_tree(trainable, t_sh, copy=True)  # copied: the step donates these buffers
        frozen = shd.put_tree(frozen, f_sh)
        opt_sh = optax.tree_map_params(
            tx, lambda _, s: s, jax.eval_shape(tx.init, trainable), t_sh, transform_non_params=lambda _: rep
        )
        opt_state = jax.jit(tx.init, out_shardings=opt_sh)(trainable)

        ckpts = RunCheckpoints(paths["ckpt_dir"], keep=int(cfg.ckpt.keep), async_save=bool(cfg.ckpt.async_save))
        start = 0
        latest = ckpts.latest_step()
        if latest is not None and not resume:
            ckpts.close()
            raise FileExistsError(
                f"{paths['ckpt_dir']} already holds checkpoints (steps {ckpts.all_steps()}); "
                "pass resume=True (--resume) to continue, or use a new workdir"
            )
        if resume and latest is not None:
            try:
                latest, restored, notes = ckpts.restore_latest_readable(trainable, opt_state)
            except UnreadableCheckpointError:
                ckpts.close()
                raise
            for note in notes:
                logging.warning("%s; resuming from step %d instead", note, latest)
            trainable, opt_state, data_state, meta = restored
            if meta.get("metadata") != metadata:
                ckpts.close()
                raise ValueError(
                    f"cannot resume {paths['ckpt_dir']}: it was trained with metadata {meta.get('metadata')}, "
                    f"this run passes {metadata}; use the same base model / settings or a new workdir"
                )
            data.set_state(data_state)
            start = latest
            logging.info("resumed from step %d of %s", start, paths["ckpt_dir"])
        elif resume:
            logging.info("resume requested but %s holds no checkpoint: starting from step 0", paths["ckpt_dir"])
        if is_main:  # drop records a previous attempt wrote after its last checkpoint
            truncate_jsonl(paths["metrics_path"], start)
        step_arr = shd.put_tree(np.int32(start), rep)

        if is_main:
            with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
                f.write(config_to_json(cfg))
        writer = MetricsWriter(workdir, cfg.logging, config_json, enabled=is_main)
        history: list[dict[str, Any]] = []
        stats: dict[str, Any] = {}
        b_sh = shd.batch_sharding(mesh)
        batch = None
        pbar = None

        def save_meta(step: int) -> dict[str, Any]:
            return {
                "step": step,
                "config": config_json,
                "metadata": metadata,
                "mesh": dict(mesh.shape),
                "process_count": jax.process_count(),
                "trainable_params": _param_count(trainable),
            }

        try:
            if start < num_steps:
                host_batch = _next_batch(data, batch_size, start + 1)
                batch = shd.shard_batch(shd.to_microbatches(host_batch, accum), b_sh)
                step_fn = make_train_step(loss_fn, tx, schedule, seed=int(tc.seed), dtype=dtype)
                jitted = jax.jit(
                    step_fn,
                    in_shardings=(t_sh, opt_sh, rep, f_sh, b_sh),
                    out_shardings=(t_sh, opt_sh, rep, rep),
                    donate_argnums=(0, 1, 2),
                )
                t0 = time.perf_counter()
                compiled = jitted.lower(trainable, opt_state, step_arr, frozen, batch).compile()
                stats = dict(compile_s=time.perf_counter() - t0, **compile_stats(compiled))
                logging.info("compiled train step: %s", stats)
                if is_main:
                    with open(os.path.join(workdir, COMPILE_FILE), "w") as f:
                        json.dump(stats, f, indent=2)
                if is_main and cfg.logging.progress_bar:
                    pbar = tqdm(total=num_steps, initial=start, desc="train", dynamic_ncols=True)

            log_every = int(tc.log_every) or num_steps
            eval_every = int(tc.eval_every)
            ckpt_every = int(cfg.ckpt.every)
            pending: list[tuple[int, dict[str, jax.Array]]] = []
            window = {"t": time.perf_counter(), "steps": 0, "examples": 0, "tokens": 0, "has_tokens": True}

            for step in range(start + 1, num_steps + 1):
                if batch is None:
                    host_batch = _next_batch(data, batch_size, step)
                    batch = shd.shard_batch(shd.to_microbatches(host_batch, accum), b_sh)
                tokens = count_tokens(host_batch)
                window["steps"] += 1
                window["examples"] += batch_size
                window["tokens"] += tokens or 0
                window["has_tokens"] &= tokens is not None
                last_batch_sharding = batch[next(iter(batch))].sharding
                trainable, opt_state, step_arr, metrics = compiled(trainable, opt_state, step_arr, frozen, batch)
                batch = None
                pending.append((step, metrics))
                if between_steps is not None:
                    new_frozen = between_steps(step, trainable, host_batch)
                    if new_frozen is not None:
                        frozen = shd.put_tree(new_frozen, f_sh)

                final = step == num_steps
                if (ckpt_every and step % ckpt_every == 0) or final:
                    check_finite(pending, trainable)  # a diverged run stops before it saves anything
                    ckpts.save(step, trainable, opt_state, data.get_state(), save_meta(step))
                    if on_save is not None:
                        on_save(step)
                do_eval = eval_fn is not None and ((eval_every and step % eval_every == 0) or final)
                if step % log_every == 0 or final or do_eval:
                    records = _flush(pending, window)
                    pending = []
                    writer.write(records)
                    history.extend(records)
                    last = records[-1]
                    if pbar is not None:
                        post = {"loss": f"{last['loss']:.4g}"}
                        if "time/tokens_per_s" in last:
                            post["tok/s"] = f"{last['time/tokens_per_s']:.4g}"
                        pbar.set_postfix(post)
                    logging.info("step %d: %s", step, {k: last[k] for k in sorted(last) if k != "step"})
                if do_eval:
                    values = eval_fn(trainable, step)
                    record = {"step": step}
                    for k, v in dict(values).items():
                        record[k if k.startswith("eval/") else f"eval/{k}"] = (
                            shd.host_scalar(v) if isinstance(v, jax.Array) else float(v)
                        )
                    writer.write([record])
                    history.append(record)
                    logging.info("eval step %d: %s", step, record)
                if pbar is not None:
                    pbar.update(1)
        finally:
            if pbar is not None:
                pbar.close()
            ckpts.wait()
            ckpts.close()
            writer.close()

    loss_curve = None
    if is_main:
        loss_curve = plot_loss_curves(paths["metrics_path"], os.path.join(workdir, LOSS_PNG))
    return TrainResult(
        trainable=trainable,
        step=max(start, num_steps),
        history=history,
        loss_curve=loss_curve,
        batch_sharding=last_batch_sharding if start < num_steps else None,
        compile_stats=stats,
        opt_state=opt_state,
        **paths,
    )


class NonFiniteError(FloatingPointError):
    """The loss, the gradient norm, the learning rate or the updated weights stopped being finite."""


WATCHED = ("loss", "grad_norm", "lr")


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def check_finite(pending: list[tuple[int, Mapping[str, Any]]], trainable: Any = None) -> None:
    """Raise `NonFiniteError` naming the first step whose loss / grad_norm / lr is not finite, or
    (given `trainable`) if the weights after the last pending step are not. Blocks on those steps."""
    for step, metrics in pending:
        values = {k: float(shd.host_scalar(metrics[k])) for k in WATCHED if k in metrics}
        bad = [k for k, v in values.items() if not np.isfinite(v)]
        if bad:
            raise NonFiniteError(_nonfinite_message(step, values, bad))
    if trainable is not None and pending and not bool(shd.host_scalar(_all_finite(trainable))):
        step = pending[-1][0]
        raise NonFiniteError(_nonfinite_message(step, dict(pending[-1][1]), ["weights"]))


def _nonfinite_message(step: int, values: Mapping[str, Any], bad: list[str]) -> str:
    shown = ", ".join(f"{k}={float(shd.host_scalar(v)):.4g}" for k, v in values.items() if k in WATCHED)
    fix = ("pass a finite learning rate (--lr / optim.lr)" if "lr" in bad
           else "lower the learning rate (--lr / optim.lr) or check the data and the loss")
    return (f"training diverged at step {step}: {' and '.join(bad)} not finite ({shown}); the run stopped "
            f"before saving anything from this step on: {fix}")


def _flush(pending: list[tuple[int, dict[str, jax.Array]]], window: dict[str, Any]) -> list[dict[str, Any]]:
    """Device metrics of the steps since the last flush -> records; the last gets the throughput."""
    records = []
    for step, metrics in pending:
        record = {"step": step}
        for k, v in metrics.items():
            if np.ndim(v) != 0:
                raise ValueError(f"loss_fn metric {k!r} has shape {np.shape(v)}; metrics must be scalars")
            record[k] = float(shd.host_scalar(v))  # blocks until the step has run
        records.append(record)
    bad = [(r["step"], [k for k in WATCHED if k in r and not np.isfinite(r[k])]) for r in records]
    bad = [(step, keys) for step, keys in bad if keys]
    if bad:
        step, keys = bad[0]
        raise NonFiniteError(_nonfinite_message(step, next(r for r in records if r["step"] == step), keys))
    now = time.perf_counter()
    dt = max(now - window["t"], 1e-9)
    last = records[-1]
    last["time/steps_per_s"] = window["steps"] / dt
    last["time/examples_per_s"] = window["examples"] / dt
    if window["has_tokens"]:
        last["time/tokens_per_s"] = window["tokens"] / dt
    window.update(t=now, steps=0, examples=0, tokens=0, has_tokens=True)
    return records
