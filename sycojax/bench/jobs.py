"""The benchmark jobs: one registered function per table row, building both sides of it.

    @job("forward", tokens=..., flops=...)
    def forward(side: str, ctx: Context) -> Workload: ...

`side` is `"jax"` (ours) or `"torch"` (the PyTorch reference written plainly, the way the upstream
projects do: transformers, PEFT, `loss.backward(); opt.step()`). The function returns a
`Workload`: `run()` does one repetition (the timer blocks on its result) and `check(result)`
turns the last result into a small JSON value that the parent compares across sides (argmax
tokens, generated tokens, losses), so a speed-up that changed the answer shows in the table.
Setup (loading, building inputs) happens in the function; compilation in the warm-up runs.

Adding a row = writing one such function. Everything framework-specific is imported inside the
function, so a PyTorch worker never imports JAX and vice versa.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from sycojax.bench.context import Context, Inputs

JAX, TORCH = "jax", "torch"
SIDES = (JAX, TORCH)


@dataclasses.dataclass
class Workload:
    run: Callable[[], Any]
    check: Callable[[Any], Any] = lambda result: None
    warmup: int = 1  # untimed calls first (compilation / allocator warm-up)


@dataclasses.dataclass(frozen=True)
class Job:
    name: str
    build: Callable[[str, Context], Workload]
    tokens: Callable[[Inputs], int]  # tokens processed (or generated) per repetition
    flops: Callable[[Any, Inputs], float]  # (cfg, inputs) -> model FLOPs per repetition (see flops.py)
    compare: str = "agree"  # check values: "agree" = share of equal items; "close" = 1.0 if allclose(rtol=1e-3)
    doc: str = ""


JOBS: dict[str, Job] = {}


def job(name: str, *, tokens, flops, compare: str = "agree"):
    """Register `fn(side, ctx) -> Workload` as the benchmark row `name`."""

    def deco(fn):
        if name in JOBS:
            raise ValueError(f"benchmark job {name!r} registered twice")
        JOBS[name] = Job(name, fn, tokens, flops, compare, (fn.__doc__ or "").strip().splitlines()[0])
        return fn

    return deco


def _flops():  # imported lazily: flops.py needs the model config (JAX), only the parent calls it
    from sycojax.bench import flops

    return flops


# ============================================================================= forward
FWD_B, FWD_T = 4, 256


@job("forward", tokens=lambda inp: FWD_B * FWD_T, flops=lambda cfg, inp: _flops().forward_flops(cfg, FWD_B, FWD_T))
def forward(side: str, ctx: Context) -> Workload:
    """Forward pass, B=4 × T=256, full-vocabulary logits, no cache."""
    rows = ctx.inputs.forward_rows[:FWD_B]
    if side == JAX:
        import jax
        import jax.numpy as jnp

        from sycojax.masks import causal_padding, positions_from_valid
        from sycojax.models import forward as model_forward

        cfg, params = ctx.jax_model
        tokens = jnp.asarray(rows, jnp.int32)

        @jax.jit
        def fwd(params, tokens):
            valid = jnp.ones(tokens.shape, bool)
            out = model_forward(params, tokens, cfg=cfg, positions=positions_from_valid(valid), mask=causal_padding(valid))
            return out.logits

        return Workload(lambda: fwd(params, tokens), check=lambda lg: jnp.argmax(lg, -1).ravel().tolist())

    import torch

    model = ctx.hf_model
    tokens = torch.tensor(rows, dtype=torch.long)

    def run():
        with torch.inference_mode():
            return model(input_ids=tokens).logits

    return Workload(run, check=lambda lg: lg.argmax(-1).ravel().tolist())


# ============================================================================= generation
NEW_TOKENS = 128


def _generate_job(batch: int):
    def tokens(inp: Inputs) -> int:
        return batch * NEW_TOKENS

    def flops(cfg, inp: Inputs) -> float:
        return _flops().generate_flops(cfg, [len(p) for p in inp.prompts[:batch]], NEW_TOKENS)

    def build(side: str, ctx: Context) -> Workload:
        prompts = ctx.inputs.prompts[:batch]
        pad = ctx.inputs.pad_id
        if side == JAX:
            from sycojax.infer.generate import generate

            cfg, params = ctx.jax_model
            # eos_ids=[]: every row generates all NEW_TOKENS (no early stop), as on the PyTorch side
            return Workload(
                lambda: generate(params, cfg, prompts, max_new_tokens=NEW_TOKENS, eos_ids=[], pad_id=pad),
                check=lambda g: [t for row in g.tokens.tolist() for t in row],
            )

        import torch

        model = ctx.hf_model
        n = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (n - len(p)) + p for p in prompts], dtype=torch.long)  # left padding
        attn = torch.tensor([[0] * (n - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
        # no EOS at all: HF generates exactly NEW_TOKENS per row, greedy, like eos_ids=[] on our side
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = pad

        def run():
            with torch.inference_mode():
                out = model.generate(
                    input_ids=ids, attention_mask=attn, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                    do_sample=False,
                )
            if out.shape[1] != n + NEW_TOKENS:
                raise RuntimeError(f"transformers generated {out.shape[1] - n} tokens, expected {NEW_TOKENS}")
            return out[:, n:]

        return Workload(run, check=lambda out: out.ravel().tolist())

    build.__doc__ = f"Greedy generation, batch {batch}, {NEW_TOKENS} new tokens (no EOS stop), chat prompts."
    return job(f"generate_b{batch}", tokens=tokens, flops=flops)(build)


generate_b1 = _generate_job(1)
generate_b8 = _generate_job(8)


# ============================================================================= training steps
# Every training row: B=4 × T=256 real chat tokens, KL(teacher ‖ student) distillation against fixed
# random teacher logits (the same array on both sides, from `teacher_logits`), AdamW (lr 1e-4, no
# weight decay). Ours: the training loop's own step (`sycojax.train.step.make_train_step`), jitted
# with the trainable tree and optimizer state donated. PyTorch: `loss.backward(); opt.step()`.
# Check values: the loss before any update (adapters start as a no-op) and, where both sides start
# from the same trainable values (memory tokens, full fine-tuning; not LoRA, whose A is random),
# the loss of the last step (Adam on equal gradients takes equal steps): they must agree.
TRAIN_B, TRAIN_T, LR, LORA_RANK, LORA_ALPHA, N_MEMORY = 4, 256, 1e-4, 8, 16.0, 8


def teacher_logits(vocab: int):
    """`(B, T, V)` fp32 N(0, 2²) logits from a fixed seed (numpy: both sides get the same array)."""
    import numpy as np

    return (2.0 * np.random.default_rng(0).standard_normal((TRAIN_B, TRAIN_T, vocab), dtype=np.float32))


def _memory_rows(rows: list[list[int]], vocab: int) -> list[list[int]]:
    """Memory-token ids `V..V+n-1` right after each row's first token, cut back to `TRAIN_T`."""
    return [(r[:1] + list(range(vocab, vocab + N_MEMORY)) + r[1:])[:TRAIN_T] for r in rows]


def _jax_train_workload(ctx: Context, kind: str) -> Workload:
    import jax
    import jax.numpy as jnp
    import optax

    from sycojax.adapters import LoraConfig, init_lora
    from sycojax.adapters.memory import init_memory
    from sycojax.masks import causal_padding, positions_from_valid
    from sycojax.models import Adapters, forward
    from sycojax.objectives.distill import token_kl
    from sycojax.train.step import make_train_step

    cfg, params = ctx.jax_model
    rows = ctx.inputs.forward_rows[:TRAIN_B]
    if kind == "memory":
        rows = _memory_rows(rows, cfg.vocab_size)
    tokens = jnp.asarray(rows, jnp.int32)
    teacher = jnp.asarray(teacher_logits(cfg.vocab_size))
    lcfg = LoraConfig(rank=LORA_RANK, alpha=LORA_ALPHA)
    if kind == "lora":
        trainable, frozen = init_lora(params, cfg, lcfg, jax.random.key(0)), params
    elif kind == "memory":
        trainable, frozen = init_memory(params, cfg, N_MEMORY), params
    else:  # the step donates the trainable tree: hand it the loaded params, keep no other reference
        trainable, frozen = params, None
        del ctx.jax_model
        params = None

    def loss_fn(trainable, frozen, batch, rng):
        if kind == "lora":
            base, adapters = frozen, Adapters(lora=trainable, lora_scale=lcfg.scale)
        elif kind == "memory":
            base, adapters = frozen, Adapters(embeddings=trainable)
        else:
            base, adapters = trainable, None
        valid = jnp.ones(batch["tokens"].shape, bool)
        out = forward(base, batch["tokens"], cfg=cfg, positions=positions_from_valid(valid),
                      mask=causal_padding(valid), adapters=adapters)
        return jnp.mean(token_kl(batch["teacher"], out.logits)), {}

    tx = optax.adamw(LR, weight_decay=0.0)
    step_fn = jax.jit(make_train_step(loss_fn, tx, optax.constant_schedule(LR), seed=0, dtype=jnp.float32),
                      donate_argnums=(0, 1, 2))
    batch = {"tokens": tokens[None], "teacher": teacher[None]}  # one micro-batch
    state = [trainable, tx.init(trainable), jnp.int32(0)]
    loss0 = float(jax.jit(loss_fn)(trainable, frozen, batch=jax.tree.map(lambda x: x[0], batch), rng=None)[0])

    def run():
        state[0], state[1], state[2], metrics = step_fn(state[0], state[1], state[2], frozen, batch)
        return metrics["loss"]

    return Workload(run, check=lambda loss: [loss0] if kind == "lora" else [loss0, float(loss)])


def _torch_train_workload(ctx: Context, kind: str) -> Workload:
    import torch
    import torch.nn.functional as F

    model = ctx.hf_model
    for p in model.parameters():
        p.requires_grad_(kind == "full")
    rows = ctx.inputs.forward_rows[:TRAIN_B]
    vocab = model.config.vocab_size
    teacher = torch.from_numpy(teacher_logits(vocab))

    if kind == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(
            r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
        trainable = [p for p in model.parameters() if p.requires_grad]
    elif kind == "memory":
        rows = _memory_rows(rows, vocab)
        emb = model.get_input_embeddings()
        memory = torch.nn.Parameter(emb.weight.detach().mean(0, keepdim=True).repeat(N_MEMORY, 1))
        trainable = [memory]
    else:
        trainable = list(model.parameters())
    model.train()  # no dropout in this model; train mode as a training loop would have it
    ids = torch.tensor(rows, dtype=torch.long)

    def logits():
        if kind != "memory":
            return model(input_ids=ids).logits
        is_mem = ids >= vocab
        e = model.get_input_embeddings()(ids.clamp(max=vocab - 1))
        e = torch.where(is_mem[..., None], memory[(ids - vocab).clamp(0, N_MEMORY - 1)], e)
        return model(inputs_embeds=e).logits

    def loss_fn():
        log_s = F.log_softmax(logits().float(), dim=-1)
        log_p = F.log_softmax(teacher, dim=-1)  # per step, as our token_kl does
        return F.kl_div(log_s, log_p, log_target=True, reduction="none").sum(-1).mean()

    opt = torch.optim.AdamW(trainable, lr=LR, weight_decay=0.0)
    with torch.no_grad():
        loss0 = float(loss_fn())

    def run():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        return loss.detach()

    return Workload(run, check=lambda loss: [loss0] if kind == "lora" else [loss0, float(loss)])


def _train_job(kind: str, doc: str):
    def flops(cfg, inp: Inputs) -> float:
        f = _flops()
        adapter = LORA_RANK * f.lora_io_per_token(cfg) if kind == "lora" else 0
        return f.train_flops(cfg, TRAIN_B, TRAIN_T, base_trains=kind == "full", adapter_params=adapter)

    def build(side: str, ctx: Context) -> Workload:
        return _jax_train_workload(ctx, kind) if side == JAX else _torch_train_workload(ctx, kind)

    build.__doc__ = doc
    return job(f"{kind}_step", tokens=lambda inp: TRAIN_B * TRAIN_T, flops=flops, compare="close")(build)


lora_step = _train_job("lora", "LoRA train step (r=8, α=16, all linear layers), B=4 × T=256, KL to fixed logits, AdamW.")
memory_step = _train_job("memory", "Memory-token train step (8 trained embeddings, base frozen), B=4 × T=256, KL, AdamW.")
full_step = _train_job("full", "Full fine-tuning step (every weight, AdamW), B=4 × T=256, KL to fixed logits.")
