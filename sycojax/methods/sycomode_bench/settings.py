"""Bench settings beyond the config file: the persistent compile cache, `--quick` (a smoke test of the whole
pipeline) and one step count for every method.
"""

from __future__ import annotations

import jax
import ml_collections


def enable_compile_cache(path: str) -> None:
    """Persist XLA executables across `train` calls and runs (the bench compiles the same step many times)."""
    if path:
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


QUICK_CONTEXTS = "pirate,facts"


def apply_quick(c: ml_collections.ConfigDict, contexts_given: bool = False) -> ml_collections.ConfigDict:
    """Tiny settings for a smoke test of the whole pipeline on the real model (minutes, not an hour)."""
    if not contexts_given:
        c.bench.contexts = QUICK_CONTEXTS
    c.bench.update(
        dict(num_train_queries=4, samples_per_query=1, num_eval_queries=2, max_response_tokens=12, num_samples=1)
    )
    for m in c.methods.values():
        m.steps = 2
    c.train.eval_every = 1
    c.train.log_every = 1
    return c


def apply_steps(c: ml_collections.ConfigDict, steps: int) -> ml_collections.ConfigDict:
    """The same number of optimizer steps for every method."""
    for m in c.methods.values():
        m.steps = int(steps)
    return c
