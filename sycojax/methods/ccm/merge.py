"""CCM-merge's one-pass training forward: every SUM token's K/V, in every layer, is the running mean of the
COMP K/V at or before it.

A merge_recur row (`trees.group_ids`: each compressed turn is followed by `COMP×n SUM×n`):

    [BOS] c1 C×n S×n SEP c2 C×n S×n SEP ... I(t) SEP O(t) EOS

Under the merge_recur mask (`masks.ccm`, built on the SUM ids) each segment sees only itself and the SUM group
just before it. Replace SUM_j's key and value in layer l by

    K_l(SUM_j in segment t) = (1/t) Σ_{i<=t} K_l(COMP_j of turn i)        (V alike)

and that SUM group IS the memory `Mem_l(t) = (1 - 1/t) Mem_l(t-1) + (1/t) K_l(COMP(t))` the recurrent
inference keeps (`memory.update`): COMP(t) attends to Mem(t-1) and its own turn, the output turn to Mem(t),
in one parallel pass, as upstream (`sum_attn_mask` in its LlamaAttention). Keys are averaged after RoPE, as
upstream and as the inference memory stores them; SUM's own position and embedding never matter.

Why the K/V themselves are averaged, and not a score bias `log(1/t)` on every earlier COMP key: the bias gives
`Σ_i (1/t) exp(q·k_i) v_i / Z`, attention over all t·n COMP entries (a memory that grows like concat's), while
the merged memory gives `exp(q·k̄) v̄`; `exp` is not linear, so the two differ and only the averaged K/V equal
the fixed-size memory at inference. The average is linear in K/V, so it is one `(T, T)` weight matrix
(`running_mean_weights`, the same for every layer) applied to each layer's K and V: O(T² · kv) per layer,
below the attention's own O(T² · heads · hd).

The replacement is `models.forward`'s `kv_mix` seam (`(weights, rows)`, applied after RoPE in every layer of
either architecture), so the training pass is the ONE model's forward, not a copy of its blocks.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from sycojax.models import Adapters, ModelConfig, forward


def running_mean_weights(tokens: Int[Array, "b t"], first_id: int, n_tok: int) -> Float[Array, "b t t"]:
    """`W[q, k] = 1/c` where q is SUM_j (id `first_id + n_tok + j`) and k one of the c COMP_j tokens (id
    `first_id + j`) at or before q; rows of every other token are 0 (upstream's normalised `sum_attn_mask`)."""
    is_comp = (tokens >= first_id) & (tokens < first_id + n_tok)
    is_sum = (tokens >= first_id + n_tok) & (tokens < first_id + 2 * n_tok)
    comp_slot = jnp.where(is_comp, tokens - first_id, -1)
    sum_slot = jnp.where(is_sum, tokens - first_id - n_tok, -2)
    t = tokens.shape[1]
    hit = (sum_slot[:, :, None] == comp_slot[:, None, :]) & jnp.tril(jnp.ones((t, t), bool))[None]
    hit = hit.astype(jnp.float32)
    return hit / jnp.maximum(hit.sum(-1, keepdims=True), 1.0)


def forward_merge(
    params: dict,
    tokens: Int[Array, "b t"],
    *,
    cfg: ModelConfig,
    positions: Int[Array, "b t"],
    mask: Bool[Array, "b 1 t t"],
    adapters: Adapters,
    first_id: int,
    n_tok: int,
) -> Float[Array, "b t v"]:
    """Logits (fp32) of a merge_recur row: `models.forward` with every SUM token's K/V the running mean of the
    COMP K/V at or before it, in every layer (module docstring)."""
    is_sum = (tokens >= first_id + n_tok) & (tokens < first_id + 2 * n_tok)
    return forward(params, tokens, cfg=cfg, positions=positions, mask=mask, adapters=adapters,
                   kv_mix=(running_mean_weights(tokens, first_id, n_tok), is_sum)).logits
