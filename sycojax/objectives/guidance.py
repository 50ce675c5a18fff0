"""The guidance loss of "Memorizing Documents with Guidance" (Park & Choi, IJCAI 2024), both forms.

A document's text is scored twice: with its own key (`ce_pos`, to be low: memorised) and with a
negative key (`ce_neg`, to sit at `tau` nats/token: "forgotten", not pushed to infinity):

    paper:  L = ce_pos + alpha · |tau − ce_neg|
    code:   L = ce_pos + alpha · min((ce_neg − tau)², ce_pos)      (upstream train_guidance.py)

The code form caps the negative term by `ce_pos` (gradient flows to whichever is smaller), so the
guidance never outweighs learning the document. Upstream: tau = 4.5, alpha = 0.1.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

GUIDANCE_FORMS = ("paper", "code")
TAU, ALPHA = 4.5, 0.1


@functools.partial(jax.jit, static_argnames=("form",))
def guidance_loss(
    ce_pos: Float[Array, ""], ce_neg: Float[Array, ""], *, tau: float = TAU, alpha: float = ALPHA,
    form: str = "code",
) -> Float[Array, ""]:
    """`ce_pos + alpha · guidance(ce_neg)` in the named form (see the module docstring)."""
    if form == "paper":
        return ce_pos + alpha * jnp.abs(tau - ce_neg)
    if form == "code":
        return ce_pos + alpha * jnp.minimum((ce_neg - tau) ** 2, ce_pos)
    raise ValueError(f"unknown guidance form {form!r}; choose {' or '.join(GUIDANCE_FORMS)}")
