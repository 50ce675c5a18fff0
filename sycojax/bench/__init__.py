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

Adding a row (e.g. `consolidate_e2e`): one function in `jobs.py`,

    @job("consolidate_e2e", tokens=lambda inp: ..., flops=lambda cfg, inp: ...)
    def consolidate_e2e(side: str, ctx: Context) -> Workload: ...

returning a `Workload(run, check)`; it then appears in `--jobs`, the table and the JSON.
"""
