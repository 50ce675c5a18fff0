"""The training loop on one device: the update rule, accumulation, outputs, exact resume."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_toy as toy

from sycojax.train import ArrayIterator, RunCheckpoints, make_schedule, train
from sycojax.train.metrics import read_jsonl


def test_one_sgd_step_is_p_minus_lr_grad(tmp_path):
    """SGD, constant lr, no clipping: θ1 = θ0 − lr·∇L(θ0) on the first batch."""
    data = ArrayIterator(toy.arrays(), 8, seed=3)
    first = next(ArrayIterator(toy.arrays(), 8, seed=3))
    res = toy.run(
        str(tmp_path),
        1,
        data=data,
        dropout=0.0,
        optim__name="sgd",
        optim__schedule="constant",
        optim__warmup_frac=0.0,
        optim__clip_norm=0.0,
        optim__lr=0.1,
    )
    loss_fn = toy.make_loss(0.0)
    theta0 = jax.tree.map(jnp.asarray, toy.init_trainable())
    (loss0, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(theta0, toy.frozen_tree(), first, None)
    expected = jax.tree.map(lambda p, g: p - 0.1 * g, theta0, grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), toy.params_np(res), expected)
    assert res.history[0]["loss"] == pytest.approx(float(loss0), rel=1e-6)
    assert res.history[0]["lr"] == pytest.approx(0.1)


def test_grad_accumulation_matches_full_batch(tmp_path):
    """4 micro-batches of 2 rows = one batch of 8 for a per-example mean loss (no dropout)."""
    full = toy.run(str(tmp_path / "a"), 3, dropout=0.0)
    accum = toy.run(str(tmp_path / "b"), 3, dropout=0.0, train__grad_accum=4)
    np.testing.assert_allclose(list(toy.losses(accum).values()), list(toy.losses(full).values()), rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), toy.params_np(accum), toy.params_np(full)
    )


def test_compute_dtype_casts_trainable_only(tmp_path):
    """bf16 compute: the loss sees bf16 trainable leaves; params, grads and updates stay fp32."""
    seen = {}

    def loss_fn(trainable, frozen, batch, rng):
        seen["trainable"] = jax.tree.leaves(trainable)[0].dtype
        seen["frozen"] = frozen["out_scale"].dtype
        return toy.make_loss(0.0)(trainable, frozen, batch, rng)

    cfg = toy.config(2)
    cfg.train.compute_dtype = "bfloat16"
    res = train(loss_fn, toy.init_trainable(), toy.frozen_tree(), ArrayIterator(toy.arrays(), 8), cfg, str(tmp_path))
    assert seen == {"trainable": jnp.bfloat16, "frozen": jnp.float32}
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(res.trainable))
    assert np.isfinite(res.history[-1]["loss"])


def test_schedule_warmup_then_cosine():
    optim = {"lr": 1.0, "schedule": "cosine", "warmup_frac": 0.25}
    sched = make_schedule(optim, 8)  # W = 2
    np.testing.assert_allclose(
        [float(sched(t)) for t in (0, 1, 2, 4, 6, 8)],
        [0.0, 0.5, 1.0, 0.5 * (1 + np.cos(np.pi * 2 / 6)), 0.5 * (1 + np.cos(np.pi * 4 / 6)), 0.0],
        atol=1e-6,
    )
    lin = make_schedule({"lr": 2.0, "schedule": "linear", "warmup_frac": 0.0}, 4)
    np.testing.assert_allclose([float(lin(t)) for t in range(5)], [2.0, 1.5, 1.0, 0.5, 0.0], atol=1e-6)


def test_outputs_metrics_tensorboard_png(tmp_path):
    evals = []
    res = toy.run(
        str(tmp_path),
        4,
        eval_fn=lambda t, s: evals.append(s) or {"w_norm": jnp.linalg.norm(t["dense1"]["kernel"])},
        train__eval_every=2,
        train__log_every=2,
    )
    records = read_jsonl(res.metrics_path)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in records if "eval/w_norm" in r] == [2, 4] == evals
    # the batch has a `tokens` entry (8 x 5): tokens/s is reported on logging steps
    logged = [r for r in records if "time/tokens_per_s" in r]
    assert [r["step"] for r in logged] == [2, 4]
    assert all(r["time/tokens_per_s"] == pytest.approx(40 * r["time/steps_per_s"]) for r in logged)
    assert {"loss", "grad_norm", "lr", "mse_out0"} <= set(records[0])
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(res.tensorboard_dir))
    with open(res.loss_curve, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(os.path.join(res.workdir, "compile.json")) as f:
        compiled = json.load(f)
    assert compiled["argument_size_in_bytes"] > 0 and "temp_size_in_bytes" in compiled
    with open(os.path.join(res.workdir, "config.json")) as f:
        saved_cfg = json.load(f)
    assert saved_cfg["train"]["num_steps"] == 4


def test_checkpoint_contents_and_keep(tmp_path):
    res = toy.run(str(tmp_path), 6, ckpt__every=1, ckpt__keep=2)
    ck = RunCheckpoints(res.ckpt_dir, read_only=True)
    assert ck.all_steps() == [5, 6]
    data_state, meta = ck.restore_json(6)
    ck.close()
    assert data_state["epoch"] * 8 + data_state["index"] == 6  # 64 rows / batch 8 = 8 batches per epoch
    assert meta["step"] == 6 and meta["metadata"] == {"base_model": "toy-mlp", "base_hash": "0123abcd"}
    assert meta["config"]["ckpt"]["keep"] == 2
    assert not os.path.exists(os.path.join(res.ckpt_dir, "6", "frozen"))


class Preempted(Exception):
    pass


class StopAfter:
    """Wraps a data iterator; raises `Preempted` when asked for batch `k + 1` (a job killed after step k)."""

    def __init__(self, inner, k):
        self.inner, self.k, self.n = inner, k, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.n == self.k:
            raise Preempted
        self.n += 1
        return next(self.inner)

    def get_state(self):
        return self.inner.get_state()

    def set_state(self, state):
        self.inner.set_state(state)


def test_resume_continues_exactly(tmp_path):
    """Stop after step 4 (checkpoints every 2), resume: steps 5..9 equal an uninterrupted run's."""
    full = toy.run(str(tmp_path / "full"), 9)
    wd = str(tmp_path / "resumed")
    with pytest.raises(Preempted):
        toy.run(wd, 9, data=StopAfter(ArrayIterator(toy.arrays(), 8, seed=3), 4))
    with pytest.raises(FileExistsError, match="resume=True"):
        toy.run(wd, 9)
    resumed = toy.run(wd, 9, resume=True)
    assert sorted(toy.losses(resumed)) == [5, 6, 7, 8, 9]
    for step, loss in toy.losses(resumed).items():
        assert loss == toy.losses(full)[step], step
    jax.tree.map(np.testing.assert_array_equal, toy.params_np(resumed), toy.params_np(full))
    # metrics.jsonl holds every step once, in order
    assert [r["step"] for r in read_jsonl(resumed.metrics_path)] == list(range(1, 10))


def test_resume_refuses_other_metadata(tmp_path):
    toy.run(str(tmp_path), 2)
    data = ArrayIterator(toy.arrays(), 8, seed=3)
    with pytest.raises(ValueError, match="metadata"):
        train(
            toy.make_loss(),
            toy.init_trainable(),
            toy.frozen_tree(),
            data,
            toy.config(4),
            str(tmp_path),
            metadata={"base_model": "other", "base_hash": "ffff"},
            resume=True,
        )


def test_bad_batch_and_mesh_errors(tmp_path):
    with pytest.raises(ValueError, match="train.batch_size=8"):
        toy.run(str(tmp_path / "a"), 2, data=ArrayIterator(toy.arrays(), 4))
    with pytest.raises(ValueError, match="multiple of train.grad_accum"):
        toy.run(str(tmp_path / "b"), 2, train__grad_accum=3)


@pytest.mark.slow
def test_full_finetune_of_a_tiny_llama(tmp_path, tiny_llama):
    """The loop on a real sycojax param tree (HF names, stacked layers): bf16 compute, loss goes down."""
    from sycojax.masks import causal_padding, positions_from_valid
    from sycojax.models import forward
    from sycojax.objectives.language_model import causal_language_model, next_token_targets

    cfg_model, params = tiny_llama
    tokens = np.random.default_rng(0).integers(3, cfg_model.vocab_size, size=(4, 8)).astype(np.int32)

    def loss_fn(trainable, frozen, batch, rng):
        valid = jnp.ones(batch["tokens"].shape, bool)
        out = forward(
            trainable, batch["tokens"], cfg=cfg_model, positions=positions_from_valid(valid), mask=causal_padding(valid)
        )
        targets, weights = next_token_targets(batch["tokens"], valid)
        return causal_language_model(out.logits, targets, weights), {}

    cfg = toy.config(
        3,
        optim__lr=1e-2,
        optim__warmup_frac=0.0,
        optim__schedule="constant",
        train__compute_dtype="bfloat16",
        train__batch_size=4,
        ckpt__every=0,
    )
    res = train(
        loss_fn,
        params,
        {},
        ArrayIterator({"tokens": tokens}, 4),
        cfg,
        str(tmp_path),
        metadata={"base_model": "tiny-llama"},
    )
    losses = [r["loss"] for r in res.history]
    assert losses[-1] < losses[0] - 0.1, losses
    q = res.trainable["model"]["layers"]["self_attn"]["q_proj"]["weight"]
    assert q.dtype == jnp.float32 and q.shape == params["model"]["layers"]["self_attn"]["q_proj"]["weight"].shape


def test_steps_after_the_first_compile_nothing(tmp_path):
    """The step is compiled once, ahead of time: a run of 6 steps (3 checkpoint saves) compiles exactly
    what a run of 2 steps (1 save) does, so no step after the first triggers a recompilation."""
    from jax._src import dispatch  # noqa: PLC0415  (the event name XLA compilations are reported under)

    count = [0]

    def on_event(event, duration, **kwargs):
        del duration, kwargs
        count[0] += event == dispatch.BACKEND_COMPILE_EVENT

    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        compiles = []
        for steps in (2, 6):
            jax.clear_caches()
            count[0] = 0
            toy.run(str(tmp_path / f"run{steps}"), steps)
            compiles.append(count[0])
    finally:
        jax.monitoring.unregister_event_duration_listener(on_event)
    assert compiles[0] >= 1 and compiles[1] == compiles[0], compiles
