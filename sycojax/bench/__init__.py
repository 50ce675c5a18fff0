"""Benchmarks: our JAX code against the PyTorch reference for the same job, in one run.

`jobs` (the rows, one function each), `runner` (fresh process per side, table, JSON), `timing`
(min / median with `block_until_ready`), `hardware` (measured matmul peak, peak RSS), `flops`
(analytic model FLOPs), `context` (shared inputs and model loaders). Entry point: `launch/bench.py`.
"""
