"""Matmul floors: the time a benchmark job would take if only its matrix products ran, each alone.

The `%peak` targets compare a job with the square-matmul peak (`hardware.jax_matmul_peak`). A model's
own products are not square: the LLaMA linears have an inner dimension of 576 or 1536, the LM head
an output of 49152 columns, attention batches of 256 × 64 × 256, and decoding multiplies weights by
1 or 8 rows. This module times each of a job's products on its own (jitted `x Wᵀ` or a batched
`einsum`, fp32, best of `repeats`) and sums them over the job: the job's **floor**, with zero time
for norms, softmax, RoPE, residuals and everything else, and no overlap between products. Then
`flops / (floor · peak)` is the best `%peak` the job could show with these kernels, and
`torch_s / floor` the best ratio against a PyTorch time.

Decoding is measured as a chain, not per product: one jitted decode step (every layer's
projections, weight-major as `generate` runs them for ≤ 128 rows, then the LM head) repeated in a
`fori_loop`, so weight streaming is measured as it happens (weights read from memory, not cache).
The weights are random (timing only) with the model's shapes.

Products counted (per layer `l`, linears `W (out, in)` of `param_shapes`):
  forward over n rows:   n×in×out for every linear; QKᵀ and PV per sequence and head; the LM head
                         over the rows whose logits are needed.
  backward (frozen base): the activation gradient of each of those, `g (n, out) · W` = n×out×in, and
                         of the attention products (dQ, dK, dP, dV: four per sequence and head).
LoRA's rank-r products (r = 8: ~3% of a linear's FLOPs) are left out, which only lowers the floor.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from sycojax.bench import flops as fp
from sycojax.bench.timing import time_fn
from sycojax.models import ModelConfig


@dataclasses.dataclass(frozen=True)
class Product:
    """`count` products of `(batch ×) m × k` by `k × n`."""

    m: int
    k: int
    n: int
    count: int = 1
    batch: int = 1

    @property
    def flops(self) -> float:
        return 2.0 * self.batch * self.m * self.k * self.n * self.count


def linear_shapes(cfg: ModelConfig) -> list[tuple[int, int]]:
    """`(out, in)` of every linear of one transformer block."""
    return [(o, i) for _, o, i in fp.layer_linear_shapes(cfg)]


def forward_products(cfg: ModelConfig, batch: int, seq: int, logits_rows: int | None = None,
                     backward: bool = False, attention: bool = True) -> list[Product]:
    """The products of a forward (and, with `backward`, of its activation gradients) over `batch × seq`
    tokens; the LM head over `logits_rows` rows (default: every token); `attention=False` leaves out
    the attention products (rows of different sequences packed together)."""
    n, L = batch * seq, cfg.num_layers
    rows = n if logits_rows is None else logits_rows
    heads, hd = batch * cfg.num_heads, cfg.head_dim
    fwd = [Product(n, i, o, L) for o, i in linear_shapes(cfg)]
    if attention:
        fwd += [Product(seq, hd, seq, L, heads), Product(seq, seq, hd, L, heads)]  # QKᵀ, PV
    if rows:
        fwd.append(Product(rows, cfg.hidden_size, cfg.vocab_size))
    if not backward:
        return fwd
    bwd = [Product(n, o, i, L) for o, i in linear_shapes(cfg)]  # g · W
    if attention:
        bwd += [Product(seq, seq, hd, L, heads), Product(seq, seq, hd, L, heads),  # dQ = dS K, dK = dSᵀ Q
                Product(seq, hd, seq, L, heads), Product(seq, seq, hd, L, heads)]  # dP = dO Vᵀ, dV = Pᵀ dO
    if rows:
        bwd.append(Product(rows, cfg.vocab_size, cfg.hidden_size))
    return fwd + bwd


@functools.cache
def product_seconds(m: int, k: int, n: int, batch: int = 1, repeats: int = 5) -> float:
    """Best time of one fp32 `(batch ×) (m, k) · (k, n)` on its own (jitted; a linear's `x Wᵀ` layout)."""
    x = jax.random.normal(jax.random.key(0), (batch, m, k), jnp.float32)
    w = jax.random.normal(jax.random.key(1), (batch, n, k), jnp.float32)
    f = jax.jit(lambda x, w: jnp.einsum("bmk,bnk->bmn", x, w))
    return time_fn(lambda: f(x, w), repeats=repeats, warmup=2).min_s


def floor_seconds(products: list[Product], repeats: int = 5) -> float:
    """Σ over the products of `count ×` their time alone."""
    return sum(p.count * product_seconds(p.m, p.k, p.n, p.batch, repeats) for p in products)


def decode_step_seconds(cfg: ModelConfig, rows: int, steps: int = 8, repeats: int = 3) -> float:
    """Best time of one decode step's products for `rows` rows, measured as a chain (module docstring)."""
    shapes = linear_shapes(cfg)
    keys = iter(jax.random.split(jax.random.key(0), 1 + cfg.num_layers * len(shapes)))
    layers = [[jax.random.normal(next(keys), s, jnp.float32) * 0.02 for s in shapes] for _ in range(cfg.num_layers)]
    head = jax.random.normal(next(keys), (cfg.vocab_size, cfg.hidden_size), jnp.float32) * 0.02
    bar = jax.lax.optimization_barrier

    def dot_wm(w, h):  # weight-major `x Wᵀ` (as `layers.dot_wt`) on an input that depends on `h` (a chain)
        x = jnp.broadcast_to(h[:, :1], (rows, w.shape[1]))
        return h + bar(jnp.dot(w, bar(x.T)))[:1].T

    def step(_, h):
        for ws in layers:
            for w in ws:
                h = dot_wm(w, h)
        return dot_wm(head, h)

    run = jax.jit(lambda h: jax.lax.fori_loop(0, steps, step, h))
    x = jnp.ones((rows, cfg.hidden_size), jnp.float32)
    return time_fn(lambda: run(x), repeats=repeats, warmup=1).min_s / steps


def generate_floor_seconds(cfg: ModelConfig, batch: int, padded_prompt: int, new_tokens: int,
                           repeats: int = 5) -> dict:
    """Prefill (every prompt position, logits for the last) then `new_tokens - 1` decode steps."""
    prefill = floor_seconds(forward_products(cfg, batch, padded_prompt, logits_rows=batch), repeats)
    step = decode_step_seconds(cfg, batch)
    return {"prefill_s": prefill, "decode_step_s": step, "floor_s": prefill + (new_tokens - 1) * step}


def job_floors(cfg: ModelConfig, inputs, bench_rows: dict, repeats: int = 5, e2e_data: dict | None = None) -> list[dict]:
    """One row per benchmark job: its floor next to the bench run's times (`bench_rows`: name -> row of
    `launch/bench.py --json`). `consolidate_e2e` needs that job's data (`jobs.consolidate_data`) in `e2e_data`."""
    from sycojax.bench.jobs import LORA_RANK, NEW_TOKENS, TRAIN_B, TRAIN_T
    from sycojax.infer.generate import left_pad

    out = [("forward", floor_seconds(forward_products(cfg, TRAIN_B, TRAIN_T), repeats),
            fp.forward_flops(cfg, TRAIN_B, TRAIN_T), {})]
    lora_flops = fp.train_flops(cfg, TRAIN_B, TRAIN_T, base_trains=False,
                                adapter_params=LORA_RANK * fp.lora_io_per_token(cfg))
    out.append(("lora_step", floor_seconds(forward_products(cfg, TRAIN_B, TRAIN_T, backward=True), repeats),
                lora_flops, {}))
    for b in (1, 8):
        prompts = inputs.prompts[:b]
        padded = left_pad(prompts, inputs.pad_id)[0].shape[1]
        g = generate_floor_seconds(cfg, b, padded, NEW_TOKENS, repeats)
        out.append((f"generate_b{b}", g["floor_s"], fp.generate_flops(cfg, [len(p) for p in prompts], NEW_TOKENS),
                    {"prefill_s": g["prefill_s"], "decode_step_s": g["decode_step_s"], "padded_prompt": padded}))
    extra = (bench_rows.get("consolidate_e2e") or {}).get("extra") or {}
    if e2e_data is not None and extra.get("jax_steps"):
        parts = e2e_floor_parts(cfg, e2e_data, extra["jax_steps"], len(extra.get("jax_kl_curve") or [1]), repeats)
        out.append(("consolidate_e2e", parts["teacher_s"] + parts["steps_s"] + parts["evals_s"], None, parts))
    rows = []
    for name, floor_s, flops, more in out:
        r = bench_rows.get(name, {})
        jax_s, torch_s = r.get("jax_s"), r.get("torch_s")
        rows.append({"name": name, "floor_s": floor_s, "jax_s": jax_s, "torch_s": torch_s,
                     "jax_over_floor": jax_s / floor_s if jax_s else None,
                     "max_ratio": torch_s / floor_s if torch_s else None, "flops": flops, **more})
    return rows


def e2e_floor_parts(cfg: ModelConfig, data: dict, steps: int, evals: int, repeats: int = 5) -> dict:
    """A lower bound of the JAX `consolidate_e2e` run, over real tokens only (no padding, no attention, no
    LoRA products, the prefix that every student row shares counted once per batch, as the run packs them):
    the teacher pass (the context's K/V once, then every training and held-out row), `steps` LoRA steps
    (forward + activation gradients; batches in order, as the run takes them) and `evals` held-out KL passes
    (one per point of the run's curve)."""
    from sycojax.masks.packing import shared_prefix

    b = data["settings"]["batch"]
    tr, ev = data["train"], data["eval"]
    resp, ev_resp = [len(r) for r in tr["responses"]], [len(r) for r in ev["responses"]]

    def fwd(rows, logits, backward=False):
        return floor_seconds(forward_products(cfg, 1, rows, logits, backward, attention=False), repeats)

    def batch_tokens(split):  # batch_tokens(split)(i, j): rows i..j-1 as one batch, their shared prefix once
        rows = [s + r for s, r in zip(split["student"], split["responses"])]
        pre = shared_prefix(rows, [len(x) for x in rows])
        return lambda i, j: sum(len(x) for x in rows[i:j]) - (len(rows[i:j]) - 1) * pre

    train_tokens, eval_tokens = batch_tokens(tr), batch_tokens(ev)

    teacher = (fwd(len(data["teacher_prefix"]), 0)
               + fwd(sum(map(len, tr["teacher_suffix"])) + sum(resp), sum(resp))
               + fwd(sum(map(len, ev["teacher_suffix"])) + sum(ev_resp), sum(ev_resp)))
    step_s = 0.0
    for i in range(steps):
        j = (i * b) % len(resp)
        step_s += fwd(train_tokens(j, j + b), sum(resp[j : j + b]), backward=True)
    eval_s = evals * sum(fwd(eval_tokens(i, i + b), sum(ev_resp[i : i + b])) for i in range(0, len(ev_resp), b))
    return {"teacher_s": teacher, "steps_s": step_s, "evals_s": eval_s, "steps": steps, "evals": evals}


def total_flops(products: list[Product]) -> float:
    return math.fsum(p.flops for p in products)
