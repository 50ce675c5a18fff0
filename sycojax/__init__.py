"""sycojax: consolidating an LLM's context into parameters (see README.md)."""

from sycojax import xla_cpu

xla_cpu.apply_defaults()  # before JAX creates its CPU client; see sycojax/xla_cpu.py
