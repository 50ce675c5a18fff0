"""Benchmarks: our JAX code against the PyTorch reference for the same job, in one run.

Modules: `jobs` (the rows: one registered function each, both sides), `runner` (a fresh process
per side, the table, the JSON rows), `worker` (one side of one job), `timing` (min / median with
`block_until_ready`, plus process CPU time), `hardware` (measured matmul peak, peak RSS), `flops`
(analytic model FLOPs), `context` (shared inputs, model loaders). Entry point: `launch/bench.py`.

Method, in short:
- Same inputs on both sides: the parent tokenizes real chat prompts (MT-Bench first turns) once
  and exports our loaded weights to a HF directory that transformers loads; greedy outputs are
  compared token by token (`agree`).
- Each side runs in its own fresh process, one framework imported: PyTorch with
  `torch.set_num_threads(<cores>)`, XLA with its default (all cores). Peak RSS is that process's
  high-water mark (`VmHWM`): imports + model load + compilation + the timed runs.
- Times: min and median of `--repeats` runs after one warm-up run (compilation excluded).
  `ratio = torch_s / jax_s`. Process CPU time is recorded too (`cpu_ratio`): on a machine whose
  cores other jobs share, it is the steadier comparison.
- `%peak`: model FLOPs (flops.py) per second over the fp32 matmul peak measured at the start of the
  run (`jnp.dot` for ours, `torch.mm` for theirs), each in its own process.

Rows (`jobs.py`): `forward` (B=4 × T=256 logits), `generate_b1` / `generate_b8` (greedy, 128 new
tokens), `lora_step` / `memory_step` / `full_step` (one KL training step, B=4 × T=256), and
`consolidate_e2e`: the pirate persona of `configs/consolidate.py` into LoRA end to end (teacher
pass over shared teacher responses, training, held-out KL); PyTorch runs first, 10 steps, and its
held-out KL is the target; our time is the wall time to reach it (steps taken, KLs and target in
the row's `extra`; no tok/s or %peak for this row).

Peers (issue 25): each job also lists the stronger baselines that apply to it (`Job.peers`), run in
the same way, each in its own process: `torch_compile` (forward, train steps, consolidate_e2e),
`hf_static_compile` (generation), `llama_cpp_f32` / `llama_cpp_q8_0` (batch-1 decode; `llama_cpp.py`
writes the GGUFs from our converted weights) and our `jax_int8` decode. A row gains `peers` (seconds,
or why a peer could not run), `best_peer_ratio` (fastest peer / ours), `int8`, `first_call_s`
(compilation apart) and `recompiles` (ours, in the timed runs); `format_peer_table` prints them.

Adding a row: one function in `jobs.py`,

    @job("forward", tokens=lambda inp: ..., flops=lambda cfg, inp: ...)
    def forward(side: str, ctx: Context) -> Workload: ...

returning a `Workload(run, check)`; it then appears in `--jobs`, the table and the JSON. A job can
also declare `prepare=` (inputs the parent makes once, `ctx.shared[name]`) and `order=` (which side
runs first; later sides read the earlier results in `ctx.prior`), as `consolidate_e2e` does.
"""
