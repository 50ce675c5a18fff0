"""The benchmark jobs: one registered function per table row, building both sides of it.

    @job("forward", tokens=..., flops=...)
    def forward(side: str, ctx: Context) -> Workload: ...

`side` is `"jax"` (ours) or `"torch"` (the PyTorch reference written plainly, the way the upstream
projects do: transformers, PEFT, `loss.backward(); opt.step()`), or one of the job's `peers`: the
stronger baselines a researcher would reach for (`torch_compile`: the same PyTorch code under
`torch.compile`; `hf_static_compile`: transformers' generate with a static cache, compiled;
`llama_cpp_f32` / `llama_cpp_q8_0`: llama.cpp on GGUFs of our weights) and `jax_int8` (ours with
weight-only int8). The function returns a
`Workload`: `run()` does one repetition (the timer blocks on its result) and `check(result)`
turns the last result into a small JSON value that the parent compares across sides (argmax
tokens, generated tokens, losses), so a speed-up that changed the answer shows in the table;
`info(result)` adds named figures to the row's `extra` (JSON). Setup (loading, building inputs)
happens in the function; compilation in the warm-up runs.

A job may also declare `prepare(model) -> JSON` (inputs the parent computes once, handed to both
sides as `ctx.shared[name]`) and `order` (which side runs first; a later side reads the earlier
sides' results in `ctx.prior`): `consolidate_e2e` uses both.

Adding a row = writing one such function. Everything framework-specific is imported inside the
function, so a PyTorch worker never imports JAX and vice versa.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from sycojax.bench.context import Context, Inputs

JAX, TORCH = "jax", "torch"
SIDES = (JAX, TORCH)  # ours and the eager PyTorch reference: every job has both
# The stronger peers, and our int8 decode; a job lists those that apply to it (`Job.peers`).
TORCH_COMPILE = "torch_compile"  # the PyTorch side under torch.compile (inductor; `Context.torch_compile_mode`)
HF_STATIC = "hf_static_compile"  # transformers' generate with a static KV cache and its forward compiled
LLAMA_F32, LLAMA_Q8 = "llama_cpp_f32", "llama_cpp_q8_0"  # llama.cpp (llama-cpp-python) on GGUFs of our weights
JAX_INT8 = "jax_int8"  # ours with weight-only int8 (`sycojax.models.quant`): the row's `int8`, not a peer
PEERS = (TORCH_COMPILE, HF_STATIC, LLAMA_F32, LLAMA_Q8)
ALL_SIDES = (*SIDES, *PEERS, JAX_INT8)
# a row's `peers` names the eager side torch_eager (the JSON field of its time stays `torch_s`)
PEER_KEY = {TORCH: "torch_eager", **{p: p for p in PEERS}}


def framework(side: str) -> str:
    """Which runtime a side's worker imports: "jax", "torch" or "llama_cpp" (never two of them)."""
    if side not in ALL_SIDES:
        raise ValueError(f"unknown side {side!r}; known: {', '.join(ALL_SIDES)}")
    return "jax" if side.startswith("jax") else "llama_cpp" if side.startswith("llama_cpp") else "torch"


@dataclasses.dataclass
class Workload:
    run: Callable[[], Any]
    check: Callable[[Any], Any] = lambda result: None
    warmup: int = 1  # untimed calls first (compilation / allocator warm-up)
    info: Callable[[Any], dict | None] = lambda result: None  # extra named figures for the row (JSON)


@dataclasses.dataclass(frozen=True)
class Job:
    name: str
    build: Callable[[str, Context], Workload]
    tokens: Callable[[Inputs], int] | None  # tokens processed (or generated) per repetition; None: no tok/s
    flops: Callable[[Any, Inputs], float] | None  # (cfg, inputs) -> model FLOPs per repetition; None: no %peak
    compare: str = "agree"  # check values: "agree" = share of equal items; "close" = 1.0 if allclose(rtol=1e-3)
    doc: str = ""
    prepare: Callable[[str], Any] | None = None  # model name -> JSON inputs computed once by the parent (ctx.shared)
    order: tuple[str, ...] | None = None  # sides in this order (later ones see ctx.prior); None: as requested
    bytes: Callable[[Any, Inputs], float] | None = None  # (cfg, inputs) -> lower bound on bytes read; None: no floor
    peers: tuple[str, ...] = ()  # the sides beyond SIDES that run this job (PEERS, JAX_INT8)
    prepare_sides: tuple[str, ...] = ALL_SIDES  # `prepare` runs only when one of these sides is asked for

    @property
    def sides(self) -> tuple[str, ...]:
        return (*SIDES, *self.peers)


JOBS: dict[str, Job] = {}


def job(name: str, *, tokens, flops, compare: str = "agree", prepare=None, order: tuple[str, ...] | None = None,
        bytes=None, peers: tuple[str, ...] = (), prepare_sides: tuple[str, ...] = ALL_SIDES):
    """Register `fn(side, ctx) -> Workload` as the benchmark row `name`; `fn` builds every side in
    `SIDES + peers`."""
    unknown = [p for p in peers if p not in ALL_SIDES or p in SIDES]
    if unknown:
        raise ValueError(f"job {name!r}: unknown peer(s) {unknown}; known: {', '.join(PEERS + (JAX_INT8,))}")
    if order is not None and sorted(order) != sorted((*SIDES, *peers)):
        raise ValueError(f"job {name!r}: order must list each of {(*SIDES, *peers)} once, got {order}")

    def deco(fn):
        if name in JOBS:
            raise ValueError(f"benchmark job {name!r} registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()[0]
        JOBS[name] = Job(name, fn, tokens, flops, compare, doc, prepare, tuple(order) if order else None, bytes,
                         tuple(peers), tuple(prepare_sides))
        return fn

    return deco


def _flops():  # imported lazily: flops.py needs the model config (JAX), only the parent calls it
    from sycojax.bench import flops

    return flops


def _compiled(side: str, ctx: Context, fn, dynamic: bool | None = None):
    """`fn` under `torch.compile` (inductor, `ctx.torch_compile_mode`) for the torch_compile peer; as is for eager
    PyTorch. Inductor compiles at the first call: the worker's warm-up (its `first_s`). `dynamic=True` for inputs
    whose lengths vary (one graph for all, rather than one per length and then a dynamic one)."""
    if side != TORCH_COMPILE:
        return fn
    import torch

    return torch.compile(fn, mode=None if ctx.torch_compile_mode == "default" else ctx.torch_compile_mode,
                         dynamic=dynamic)


# ============================================================================= forward
FWD_B, FWD_T = 4, 256


@job("forward", tokens=lambda inp: FWD_B * FWD_T, flops=lambda cfg, inp: _flops().forward_flops(cfg, FWD_B, FWD_T),
     peers=(TORCH_COMPILE,))
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
            out = model_forward(params, tokens, cfg=cfg, positions=positions_from_valid(valid),
                                mask=causal_padding(valid))
            return out.logits

        return Workload(lambda: fwd(params, tokens), check=lambda lg: jnp.argmax(lg, -1).ravel().tolist())

    import torch

    model = ctx.hf_model
    tokens = torch.tensor(rows, dtype=torch.long, device=model.device)
    call = _compiled(side, ctx, model)

    def run():
        with torch.inference_mode():
            return call(input_ids=tokens).logits

    return Workload(run, check=lambda lg: lg.argmax(-1).ravel().tolist())


# ============================================================================= generation
NEW_TOKENS = 128


def _generate_job(batch: int):
    def tokens(inp: Inputs) -> int:
        return batch * NEW_TOKENS

    def flops(cfg, inp: Inputs) -> float:
        return _flops().generate_flops(cfg, [len(p) for p in inp.prompts[:batch]], NEW_TOKENS)

    def nbytes(cfg, inp: Inputs) -> float:
        return _flops().generate_bytes(cfg, [len(p) for p in inp.prompts[:batch]], NEW_TOKENS)

    def build(side: str, ctx: Context) -> Workload:
        prompts = ctx.inputs.prompts[:batch]
        pad = ctx.inputs.pad_id
        if side in (JAX, JAX_INT8):
            from sycojax.infer.generate import generate

            cfg, params = ctx.jax_model
            if side == JAX_INT8:
                from sycojax.models.quant import quantize_int8

                params = quantize_int8(params, cfg)
            # eos_ids=[]: every row generates all NEW_TOKENS (no early stop), as on the PyTorch side
            return Workload(
                lambda: generate(params, cfg, prompts, max_new_tokens=NEW_TOKENS, eos_ids=[], pad_id=pad),
                check=lambda g: [t for row in g.tokens.tolist() for t in row],
            )
        if side in (LLAMA_F32, LLAMA_Q8):
            return _llama_cpp_generate(side, ctx, prompts)

        import torch

        model = ctx.hf_model
        n = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (n - len(p)) + p for p in prompts], dtype=torch.long,
                           device=model.device)  # left padding
        attn = torch.tensor([[0] * (n - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long,
                            device=model.device)
        # no EOS at all: HF generates exactly NEW_TOKENS per row, greedy, like eos_ids=[] on our side
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = pad
        static = {}
        if side == HF_STATIC:  # the static cache and transformers' own compile of the forward (CPU included)
            from transformers import CompileConfig

            compile_config = CompileConfig(mode=ctx.torch_compile_mode)
            compile_config._compile_all_devices = True  # transformers compiles only on accelerators unless told
            static = {"cache_implementation": "static", "compile_config": compile_config}

        def run():
            with torch.inference_mode():
                out = model.generate(
                    input_ids=ids, attention_mask=attn, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                    do_sample=False, **static,
                )
            if out.shape[1] != n + NEW_TOKENS:
                raise RuntimeError(f"transformers generated {out.shape[1] - n} tokens, expected {NEW_TOKENS}")
            return out[:, n:]

        return Workload(run, check=lambda out: out.ravel().tolist())

    build.__doc__ = f"Greedy generation, batch {batch}, {NEW_TOKENS} new tokens (no EOS stop), chat prompts."
    # llama.cpp decodes one sequence (batch 1): the GGUFs of our weights are made once, by the parent
    llama = (LLAMA_F32, LLAMA_Q8) if batch == 1 else ()
    return job(f"generate_b{batch}", tokens=tokens, flops=flops, bytes=nbytes, peers=(HF_STATIC, *llama, JAX_INT8),
               prepare=_gguf_prepare if llama else None, prepare_sides=llama)(build)


GGUF_KINDS = {LLAMA_F32: "f32", LLAMA_Q8: "q8_0"}


def _gguf_prepare(model: str) -> dict:
    """The parent's `prepare` of the llama.cpp peers: `{kind: path}` of an F32 GGUF written from our converted
    weights and its Q8_0 (llama.cpp's quantizer), cached; a kind that cannot be made maps to why."""
    out = {}
    for kind in GGUF_KINDS.values():
        try:
            from sycojax.bench.llama_cpp import gguf_for

            out[kind] = str(gguf_for(model, kind))
        except Exception as e:  # noqa: BLE001 -- the peer's row says why; ours and the other peers still run
            out[kind] = f"error: {type(e).__name__}: {e}"
    return out


def _llama_cpp_generate(side: str, ctx: Context, prompts: list[list[int]]) -> Workload:
    """Greedy decode of the one prompt by llama.cpp, prefill and decode timed apart (`info`)."""
    from sycojax.bench.llama_cpp import LlamaCppDecoder

    shared = ctx.shared.get(f"generate_b{len(prompts)}") or {}
    path = shared.get(GGUF_KINDS[side], "error: no GGUF prepared (run through launch/bench.py)")
    if path.startswith("error: "):
        raise RuntimeError(path[len("error: "):])
    decode = LlamaCppDecoder(path, threads=ctx.threads, n_ctx=len(prompts[0]) + NEW_TOKENS + 8)

    def info(r):
        return {f"{side}_prefill_tok_s": r["prefill_tok_s"], f"{side}_decode_tok_s": r["decode_tok_s"]}

    return Workload(lambda: decode(prompts[0], NEW_TOKENS), check=lambda r: list(r["tokens"]), info=info)


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


def _torch_train_workload(ctx: Context, kind: str, side: str = TORCH) -> Workload:
    import torch
    import torch.nn.functional as F

    model = ctx.hf_model
    for p in model.parameters():
        p.requires_grad_(kind == "full")
    rows = ctx.inputs.forward_rows[:TRAIN_B]
    vocab = model.config.vocab_size
    teacher = torch.from_numpy(teacher_logits(vocab)).to(model.device)

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
    ids = torch.tensor(rows, dtype=torch.long, device=model.device)

    def logits():
        if kind != "memory":
            return model(input_ids=ids).logits
        is_mem = ids >= vocab
        e = model.get_input_embeddings()(ids.clamp(max=vocab - 1))
        e = torch.where(is_mem[..., None], memory[(ids - vocab).clamp(0, N_MEMORY - 1)], e)
        return model(inputs_embeds=e).logits

    def kl():
        log_s = F.log_softmax(logits().float(), dim=-1)
        log_p = F.log_softmax(teacher, dim=-1)  # per step, as our token_kl does
        return F.kl_div(log_s, log_p, log_target=True, reduction="none").sum(-1).mean()

    loss_fn = _compiled(side, ctx, kl)  # torch_compile: the forward and the loss in one graph, its backward too
    opt = torch.optim.AdamW(trainable, lr=LR, weight_decay=0.0)
    with torch.no_grad():
        loss0 = float(kl())  # eager: the compiled graph is for the training step (grad mode)

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
        return _jax_train_workload(ctx, kind) if side == JAX else _torch_train_workload(ctx, kind, side)

    build.__doc__ = doc
    return job(f"{kind}_step", tokens=lambda inp: TRAIN_B * TRAIN_T, flops=flops, compare="close",
               peers=(TORCH_COMPILE,))(build)


lora_step = _train_job("lora", "LoRA train step (r=8, α=16, all linear layers), B=4 × T=256, KL to fixed logits, "
                                "AdamW.")
memory_step = _train_job("memory", "Memory-token train step (8 trained embeddings, base frozen), B=4 × T=256, KL, "
                                    "AdamW.")
full_step = _train_job("full", "Full fine-tuning step (every weight, AdamW), B=4 × T=256, KL to fixed logits.")


# ============================================================================= consolidate_e2e
# One persona prompt (the pirate of `configs/consolidate.py`) consolidated into LoRA (r=8, α=16, every
# linear layer), end to end, on both sides, to the same held-out KL. The parent makes the data once
# (`consolidate_data`, our generator): the tokenized prompts and the teacher's responses, sampled for
# the E2E_TRAIN_QUERIES training queries (T=0.8, top-p 0.95 as the config) and greedy for the
# E2E_EVAL_QUERIES held-out ones (real ShareGPT first turns, disjoint), at most E2E_RESPONSE_TOKENS
# each. Both sides train and evaluate on exactly these tokens, so "the same held-out KL" is the same
# number on the same data; generating the responses is excluded from both timings (the generate_*
# rows time generation).
#
# Timed, one repetition = a run from scratch (fresh LoRA from a fixed init, fresh optimizer):
#   1. teacher pass: the frozen base with the context over [context + query + response] for every
#      training and held-out row (ours: the context K/V computed once, top-k targets for training and
#      the full distribution for evaluation, `sycomode.teacher_targets`; theirs: a plain batched
#      forward with the adapter disabled, full-vocabulary log-softmax at the response positions);
#   2. training, batch E2E_BATCH, rows in a fixed order, AdamW at the config's lr with its global-norm
#      clipping (ours: `make_train_step` on `sycomode.make_loss_fn`, top-k distillation, E2E_TOPK; theirs:
#      KL(teacher ‖ student) with full-vocabulary softmax, `loss.backward(); opt.step()`);
#   3. held-out KL (mean per response token, full vocabulary, both sides). PyTorch runs first:
#      E2E_TORCH_STEPS steps, then one evaluation; its KL is the target. Ours evaluates every
#      E2E_EVAL_EVERY steps (inside the timing) and stops at the first KL <= target, at most
#      E2E_MAX_STEPS steps. Without a target (the PyTorch side failed or was not run) ours does the
#      same fixed E2E_TORCH_STEPS steps and one evaluation.
# Ours also reports its time split (`jax_phases_s`: teacher, steps, held-out evaluations; each step waited
# for, so the evaluations do not absorb it).
# Not timed: model load, compilation (the warm-up run), and each side's held-out KL of the untrained
# adapter (B = 0: the base model without the context) computed in setup: that is the check value,
# and both sides must agree on it (same metric, same data).
E2E = "consolidate_e2e"
E2E_TRAIN_QUERIES, E2E_EVAL_QUERIES, E2E_RESPONSE_TOKENS, E2E_BATCH = 8, 4, 32, 4
E2E_TORCH_STEPS, E2E_EVAL_EVERY, E2E_MAX_STEPS = 10, 2, 30
# Our teacher top-k per response token: None = the config's (64, our method as configured); the vocabulary
# size (49152) makes ours distil the full distribution, the PyTorch loop's objective.
E2E_TOPK: int | None = None
E2E_LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def consolidate_settings() -> dict:
    """The run's settings: context, LoRA, optimizer and teacher sampling from `configs/consolidate.py`;
    sizes and step counts from the E2E_* constants. Refuses config values the PyTorch loop does not mirror."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "configs" / "consolidate.py"
    if not path.is_file():
        raise FileNotFoundError(f"{E2E} reads its settings from {path}, which is missing (run from a source checkout)")
    spec = importlib.util.spec_from_file_location("_bench_consolidate_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    m, o = c.method, c.optim
    if o.name != "adamw" or o.schedule != "constant" or float(o.warmup_frac) != 0.0:
        raise ValueError(f"{E2E}: the PyTorch loop is plain AdamW at a constant lr; configs/consolidate.py has "
                         f"optim.name={o.name!r}, schedule={o.schedule!r}, warmup_frac={o.warmup_frac}")
    if m.lora_targets != "all" or float(m.temp) != 1.0:
        raise ValueError(f"{E2E}: expects LoRA on every linear layer and distillation temperature 1; "
                         f"configs/consolidate.py has lora_targets={m.lora_targets!r}, temp={m.temp}")
    return {
        "context": c.data.context, "lora_rank": int(m.lora_rank), "lora_alpha": float(m.lora_alpha),
        "topk": int(m.topk) if E2E_TOPK is None else E2E_TOPK, "topk_tail": bool(m.topk_tail),
        "pack": bool(m.get("pack", False)),
        "teacher_temperature": float(m.teacher_temperature), "teacher_top_p": float(m.teacher_top_p),
        "optim": {k: o[k] for k in ("name", "lr", "schedule", "warmup_frac", "weight_decay", "clip_norm", "b1",
                                    "b2", "eps")},
        "batch": E2E_BATCH, "response_tokens": E2E_RESPONSE_TOKENS, "torch_steps": E2E_TORCH_STEPS,
        "eval_every": E2E_EVAL_EVERY, "max_steps": E2E_MAX_STEPS,
    }


def consolidate_data(params, cfg, tok, train_queries, eval_queries, settings: dict) -> dict:
    """Prompts and teacher responses for both sides (JSON): made once, by our generator, in the parent.

    Training responses are sampled (the config's teacher temperature / top-p, seed 0), held-out ones
    greedy; each ends with EOS when the teacher stopped before `settings["response_tokens"]`.
    """
    from sycojax.infer.generate import GREEDY, Sampling
    from sycojax.methods import sycomode as sm

    if not train_queries or len(train_queries) % settings["batch"]:
        raise ValueError(f"{E2E}: {len(train_queries)} training queries; need a positive multiple of the batch "
                         f"{settings['batch']} (every step sees a full batch on both sides)")
    if not eval_queries:
        raise ValueError(f"{E2E}: no held-out queries")
    n = settings["response_tokens"]
    tr = sm.build_prompts(tok, cfg, settings["context"], train_queries)
    ev = sm.build_prompts(tok, cfg, settings["context"], eval_queries)
    sm.check_fits(cfg, tr, n)
    sm.check_fits(cfg, ev, n)
    sampling = Sampling(settings["teacher_temperature"], settings["teacher_top_p"])
    train_resp = sm.teacher_responses(params, cfg, tr, max_new_tokens=n, sampling=sampling, seed=0,
                                      batch_size=len(train_queries))
    eval_resp = sm.teacher_responses(params, cfg, ev, max_new_tokens=n, batch_size=len(eval_queries),
                                     sampling=GREEDY, desc="teacher eval responses")

    def ints(rows):
        return [[int(t) for t in r] for r in rows]

    return {
        "settings": settings, "teacher_prefix": ints([tr.teacher_prefix])[0],
        "train": {"queries": list(train_queries), "teacher_suffix": ints(tr.teacher_suffix),
                  "student": ints(tr.student), "responses": ints(train_resp)},
        "eval": {"queries": list(eval_queries), "teacher_suffix": ints(ev.teacher_suffix),
                 "student": ints(ev.student), "responses": ints(eval_resp)},
    }


def _consolidate_prepare(model: str) -> dict:
    """The parent's `prepare`: the model, its tokenizer, ShareGPT queries (train, then held out)."""
    import jax

    from sycojax.methods.consolidate import sharegpt_queries
    from sycojax.models.loading import load_model
    from sycojax.models.tokenizer import load_tokenizer

    cfg, params, _ = load_model(model)
    queries = sharegpt_queries(E2E_TRAIN_QUERIES + E2E_EVAL_QUERIES)
    return consolidate_data(jax.device_put(params), cfg, load_tokenizer(model), queries[:E2E_TRAIN_QUERIES],
                            queries[E2E_TRAIN_QUERIES:], consolidate_settings())


def _jax_consolidate(ctx: Context, data: dict) -> Workload:
    import jax
    import jax.numpy as jnp

    from sycojax.adapters import LoraConfig
    from sycojax.masks import packing as pk
    from sycojax.methods import sycomode as sm
    from sycojax.train.optim import make_optimizer
    from sycojax.train.step import make_train_step

    s = data["settings"]
    cfg, params = ctx.jax_model
    spec = sm.Spec(method="lora", lora=LoraConfig(s["lora_rank"], s["lora_alpha"], ("all",)), topk=s["topk"],
                   topk_tail=bool(s.get("topk_tail", False)), max_response_tokens=s["response_tokens"])
    train_p = sm.Prompts(data["teacher_prefix"], data["train"]["teacher_suffix"], data["train"]["student"])
    eval_p = sm.Prompts(data["teacher_prefix"], data["eval"]["teacher_suffix"], data["eval"]["student"])
    train_resp, eval_resp, b = data["train"]["responses"], data["eval"]["responses"], s["batch"]
    init = sm.init_trainable(params, cfg, spec, jax.random.key(0))
    frozen = {"base": params}
    tx, schedule = make_optimizer(s["optim"], s["max_steps"])  # a constant lr (consolidate_settings checks)
    # as `consolidate.run` packs: each batch's rows end to end when that saves >= 10% of the padded slots, the
    # prefix every row shares (the chat template's system turn) held once
    rows = [x + r for x, r in zip(data["train"]["student"], train_resp)]
    lengths = [len(x) for x in rows]
    packing = (pk.plan(lengths, b, sm.bucket_length(max(lengths)), prefix=pk.shared_prefix(rows, lengths))
               if s.get("pack", False) else None)
    step_fn = jax.jit(make_train_step(sm.make_loss_fn(cfg, spec, packing), tx, schedule, seed=0, dtype=jnp.float32),
                      donate_argnums=(0, 1, 2))

    def held_out_kl(trainable, eval_t) -> float:
        p, a = sm.split_trees(params, trainable, spec)
        return sm.mean_kl(p, a, cfg, eval_t, batch_size=b)

    def eval_targets():
        return sm.teacher_targets(params, cfg, eval_p, eval_resp, topk=spec.topk, full=True, batch_size=b)

    kl_before = held_out_kl(init, eval_targets())  # setup, untimed: B = 0, the base model without the context

    def run():
        # the target is read at each run: fixed in a worker (its ctx.prior), varied by the tests without recompiling
        target = ((ctx.prior.get(TORCH) or {}).get("info") or {}).get("torch_kl")
        max_steps = s["max_steps"] if target is not None else s["torch_steps"]
        eval_every = s["eval_every"] if target is not None else max_steps
        t0 = time.perf_counter()
        train_t = sm.teacher_targets(params, cfg, train_p, train_resp, topk=spec.topk, temperature=spec.temperature,
                                     batch_size=b)
        eval_t = eval_targets()  # host arrays: the teacher's work is done
        phases = {"teacher_s": time.perf_counter() - t0, "steps_s": 0.0, "evals_s": 0.0}
        arrays = train_t.train_arrays()
        batches = [{k: jnp.asarray(v[i : i + b])[None] for k, v in arrays.items()}  # one micro-batch each
                   for i in range(0, arrays["tokens"].shape[0], b)]
        trainable = jax.tree.map(jnp.copy, init)  # the step donates its inputs: keep `init` for the next run
        state, curve = [trainable, tx.init(trainable), jnp.int32(0)], []
        for step in range(1, max_steps + 1):
            t0 = time.perf_counter()
            *state, metrics = step_fn(*state, frozen, batches[(step - 1) % len(batches)])
            jax.block_until_ready(state[0])  # so the phase split charges each step to the steps
            t1 = time.perf_counter()
            phases["steps_s"] += t1 - t0
            if step % eval_every == 0 or step == max_steps:
                curve.append((step, held_out_kl(state[0], eval_t)))
                phases["evals_s"] += time.perf_counter() - t1
                if target is not None and curve[-1][1] <= target:
                    break
        return {"target": target, "steps": step, "kl": curve[-1][1], "curve": curve, "loss": float(metrics["loss"]),
                "max_steps": max_steps, "eval_every": eval_every, "phases": phases}

    def info(r):
        return {"kl_target": r["target"], "jax_steps": r["steps"], "jax_kl": r["kl"],
                "jax_reached": None if r["target"] is None else bool(r["kl"] <= r["target"]),
                "jax_kl_curve": r["curve"], "jax_final_loss": r["loss"], "jax_kl_before": kl_before,
                "jax_max_steps": r["max_steps"], "eval_every": r["eval_every"],
                "jax_phases_s": {k: round(v, 3) for k, v in r["phases"].items()},
                "jax_packing": None if packing is None else [packing.rows, packing.length, packing.prefix]}

    return Workload(run, check=lambda r: [kl_before], info=info)


def _torch_consolidate(ctx: Context, data: dict, side: str = TORCH) -> Workload:
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model

    s, o = data["settings"], data["settings"]["optim"]
    torch.manual_seed(0)
    model = get_peft_model(ctx.hf_model, LoraConfig(r=s["lora_rank"], lora_alpha=s["lora_alpha"], lora_dropout=0.0,
                                                    target_modules=E2E_LORA_MODULES))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    init = {n: p.detach().clone() for n, p in trainable.items()}
    steps, b = s["torch_steps"], s["batch"]

    def batches(prompts, responses):
        """Right-padded `prompt + response` rows in batches of b: (ids, mask, response positions, weights)."""
        out = []
        for i in range(0, len(prompts), b):
            ps, rs = prompts[i : i + b], responses[i : i + b]
            seq_len, resp_len = max(len(p) + len(r) for p, r in zip(ps, rs)), max(len(r) for r in rs)
            ids = torch.zeros(len(ps), seq_len, dtype=torch.long)
            mask = torch.zeros(len(ps), seq_len, dtype=torch.long)
            pos = torch.zeros(len(ps), resp_len, dtype=torch.long)
            w = torch.zeros(len(ps), resp_len)
            for j, (p, r) in enumerate(zip(ps, rs)):
                ids[j, : len(p) + len(r)] = torch.tensor(p + r)
                mask[j, : len(p) + len(r)] = 1
                pos[j, : len(r)] = torch.arange(len(p) - 1, len(p) - 1 + len(r))  # logits there predict the response
                w[j, : len(r)] = 1.0
            out.append(tuple(x.to(model.device) for x in (ids, mask, pos, w)))
        return out

    prefix = data["teacher_prefix"]
    tr, ev = data["train"], data["eval"]
    train_teacher = batches([prefix + x for x in tr["teacher_suffix"]], tr["responses"])
    train_student = batches(tr["student"], tr["responses"])
    eval_teacher = batches([prefix + x for x in ev["teacher_suffix"]], ev["responses"])
    eval_student = batches(ev["student"], ev["responses"])

    def response_log_probs(batch):
        ids, mask, pos, _ = batch
        logits = model(input_ids=ids, attention_mask=mask).logits
        rows = torch.arange(ids.shape[0], device=ids.device)[:, None]
        logits = logits[rows, pos]  # (B, R, V): the response positions
        return F.log_softmax(logits.float(), dim=-1)

    def kl_sum(student_lp, teacher_lp, w):  # Σ over response tokens of KL(teacher ‖ student)
        return ((teacher_lp.exp() * (teacher_lp - student_lp)).sum(-1) * w).sum()

    # torch_compile: the forward with the log-softmax at the response positions, one graph (its backward too); a
    # new batch length, the adapter switched off (teacher) or eval mode recompile in the warm-up run
    log_probs = _compiled(side, ctx, response_log_probs, dynamic=True)

    def teacher(bs, lp=log_probs):
        with torch.no_grad(), model.disable_adapter():
            return [lp(x) for x in bs]

    def held_out_kl(teacher_eval, lp=log_probs) -> float:
        model.eval()
        with torch.no_grad():
            tot = sum(kl_sum(lp(x), t, x[3]) for x, t in zip(eval_student, teacher_eval))
        return float(tot / sum(x[3].sum() for x in eval_student))

    # setup, untimed: B = 0, the base model without the context (eager: compilation belongs to the first run)
    kl_before = held_out_kl(teacher(eval_teacher, response_log_probs), response_log_probs)

    def run():
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(init[n])
        opt = torch.optim.AdamW(trainable.values(), lr=o["lr"], betas=(o["b1"], o["b2"]), eps=o["eps"],
                                weight_decay=o["weight_decay"])
        teacher_train, teacher_eval = teacher(train_teacher), teacher(eval_teacher)
        model.train()
        for step in range(steps):
            i = step % len(train_student)
            x = train_student[i]
            loss = kl_sum(log_probs(x), teacher_train[i], x[3]) / x[3].sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if o["clip_norm"] > 0:
                torch.nn.utils.clip_grad_norm_(trainable.values(), o["clip_norm"])
            opt.step()
        return {"kl": held_out_kl(teacher_eval), "loss": loss.item(), "steps": steps}

    def info(r):  # torch_* for eager PyTorch (the KL target ours must reach), torch_compile_* for the compiled peer
        return {f"{side}_steps": r["steps"], f"{side}_kl": r["kl"], f"{side}_final_loss": r["loss"],
                f"{side}_kl_before": kl_before}

    return Workload(run, check=lambda r: [kl_before], info=info)


@job(E2E, tokens=None, flops=None, compare="close", prepare=_consolidate_prepare, order=(TORCH, TORCH_COMPILE, JAX),
     peers=(TORCH_COMPILE,))
def consolidate_e2e(side: str, ctx: Context) -> Workload:
    """Pirate persona → LoRA end to end (teacher pass, training, held-out KL) to PyTorch's 10-step KL."""
    data = ctx.shared.get(E2E)
    if data is None:
        raise RuntimeError(f"{E2E} needs the teacher data its `prepare` makes in the parent (ctx.shared[{E2E!r}]); "
                           "run it through launch/bench.py or runner.run_jobs")
    return _jax_consolidate(ctx, data) if side == JAX else _torch_consolidate(ctx, data, side)
