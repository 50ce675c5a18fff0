"""Using the trained trees: greedy decoding from the gist cache (each instruction compressed once into k
gist K/V) or from the whole prompt (pos_control), and the checks that runs compared in one table agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sycojax.data import (
    GistExample,
)
from sycojax.infer.generate import generate
from sycojax.infer.gist_cache import GistCache, compress, decode
from sycojax.methods.gist.runs import GistRun
from sycojax.methods.gist.spec import GistError
from sycojax.methods.shared import fixed_batches
from sycojax.models import Adapters, ModelConfig


def gist_generate(
    params: dict, adapters: Adapters, cfg: ModelConfig, examples: Sequence[GistExample], *, gist_id: int,
    hide_gist: bool = False, max_new_tokens: int = 128, batch_size: int = 8,
) -> list[list[int]]:
    """Greedy outputs of gisted prompts from the gist cache: each distinct instruction compressed once."""
    k = len(examples[0].gist)
    prefixes = list(dict.fromkeys(ex.prefix for ex in examples))
    row_of = {p: i for i, p in enumerate(prefixes)}
    caches = []
    for chunk, n in fixed_batches(prefixes, batch_size):
        c = compress(params, cfg, chunk, gist_id=gist_id, num_gist_tokens=k, adapters=adapters)
        caches.append(c.take(np.arange(n)))
    cache = GistCache.concatenate(caches)
    out: list[list[int]] = []
    for chunk, n in fixed_batches(list(examples), batch_size):
        rows = cache.take([row_of[ex.prefix] for ex in chunk])
        g = decode(params, cfg, rows, [ex.suffix for ex in chunk], max_new_tokens=max_new_tokens, adapters=adapters,
                   hide_gist=hide_gist)
        out += g.rows()[:n]
    return out


def full_prompt_generate(
    params: dict, adapters: Adapters, cfg: ModelConfig, examples: Sequence[GistExample], *,
    max_new_tokens: int = 128, batch_size: int = 8,
) -> list[list[int]]:
    """Greedy outputs with the whole prompt visible (pos_control; also gist without a cache, for timing)."""
    out: list[list[int]] = []
    for chunk, n in fixed_batches(list(examples), batch_size):
        g = generate(params, cfg, [ex.prompt for ex in chunk], max_new_tokens=max_new_tokens, adapters=adapters)
        out += g.rows()[:n]
    return out


def _check_runs(runs: Sequence[GistRun]) -> None:
    """Runs compared in one table: distinct conditions, one base model, one prompt format, one split."""
    if not runs:
        raise GistError("no runs to evaluate: pass --workdir, or --gist_workdir / --pos_workdir / --neg_workdir")
    names = [r.name for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise GistError(f"two runs evaluate as the same condition {dup}: {[r.workdir for r in runs]}")
    first = runs[0]
    for r in runs[1:]:
        if r.metadata.get("base_hash") != first.metadata.get("base_hash"):
            raise GistError(f"{r.workdir} and {first.workdir} were trained on different base models")
        if r.spec.fmt != first.spec.fmt:
            raise GistError(f"{r.workdir} uses the {r.spec.fmt!r} prompt format, {first.workdir} {first.spec.fmt!r}: "
                            "conditions are only comparable on the same prompts")
        fields = ("seed", "n_val_unseen", "n_val_seen_per_task", "n_train_seen_per_task")
        a = {f: first.config.get("data", {}).get(f) for f in fields}
        b = {f: r.config.get("data", {}).get(f) for f in fields}
        if a != b:
            raise GistError(
                f"{r.workdir} and {first.workdir} used different Alpaca+ splits ({b} vs {a}): their held-out "
                "splits differ, so they cannot be compared"
            )
