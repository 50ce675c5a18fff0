"""The optax chain built from the `optim` config section.

    tx = chain(clip_by_global_norm(clip_norm),        # omitted when clip_norm <= 0
               adamw(lr_t, b1, b2, eps, weight_decay)  # or: sgd(lr_t) on  g + weight_decay * p
               )

Learning rate at update `t` (0-based count of updates already applied), with
`W = round(warmup_frac * num_steps)`, `T = num_steps`:

    warmup    t < W:  lr * t / W
    constant  t >= W: lr
    cosine    t >= W: lr * 0.5 * (1 + cos(pi * (t - W) / (T - W)))
    linear    t >= W: lr * (1 - (t - W) / (T - W))
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optax

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("constant", "cosine", "linear")


def make_schedule(optim: Mapping[str, Any], num_steps: int) -> optax.Schedule:
    """The learning-rate schedule `t -> lr_t` of the module docstring (optax schedules joined)."""
    lr, name = float(optim["lr"]), optim["schedule"]
    if name not in SCHEDULES:
        raise ValueError(f"optim.schedule={name!r}; choose one of {SCHEDULES}")
    warmup = round(float(optim["warmup_frac"]) * num_steps)
    decay_steps = max(num_steps - warmup, 1)
    if name == "constant":
        after = optax.constant_schedule(lr)
    elif name == "cosine":
        after = optax.cosine_decay_schedule(lr, decay_steps)
    else:
        after = optax.linear_schedule(lr, 0.0, decay_steps)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def make_optimizer(optim: Mapping[str, Any], num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`(tx, schedule)` for the `optim` config section; `schedule` is also logged as `lr` each step."""
    name = optim["name"]
    if name not in OPTIMIZERS:
        raise ValueError(f"optim.name={name!r}; choose one of {OPTIMIZERS}")
    schedule = make_schedule(optim, num_steps)
    wd = float(optim["weight_decay"])
    if name == "adamw":
        core = optax.adamw(
            schedule, b1=float(optim["b1"]), b2=float(optim["b2"]), eps=float(optim["eps"]), weight_decay=wd
        )
    else:
        core = optax.chain(optax.add_decayed_weights(wd), optax.sgd(schedule)) if wd else optax.sgd(schedule)
    clip = float(optim["clip_norm"])
    tx = optax.chain(optax.clip_by_global_norm(clip), core) if clip > 0 else core
    return tx, schedule
