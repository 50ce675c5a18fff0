"""CCM inference: the training computation run recurrently, keeping only the COMP tokens' K/V.

    mem = CompressedMemory.empty(cfg, batch)
    mem = update(params, trainable, cfg, spec, mem, turns)      # one turn per conversation, each compressed
    nll = score(params, trainable, cfg, spec, mem, inputs, outputs)   # the target turn's NLL from memory
    ids = generate(params, trainable, cfg, spec, mem, prompts, max_new_tokens=48)

Segments are laid out exactly as the training rows (`data.py`): the first turn's segment starts with BOS,
every later one with SEP; each update runs `[BOS|SEP] turn C×n` over the memory (all of it visible), with the
conditional LoRA on the COMP positions, and keeps the n new COMP K/V per layer:

    concat_recur: appended, so memory grows n_tok entries per turn per layer (every later token sees every
                  earlier COMP group in training);
    merge_recur:  Mem(t) = (1 - 1/t) Mem(t-1) + (1/t) COMP(t): n_tok entries per layer whatever the number of
                  turns; in training this is the SUM group after turn t (`merge.py`), the only group the next
                  segment sees. The SUM tokens themselves are never run here: their K/V are this mean.
    sink=True:    the first turn's BOS K/V is kept as entry 0 as well (every training token may see it).

Positions follow the skip rule (text positions count text tokens only; the j-th COMP token of a group sits at
last text position + j). Rows of a batch are left-padded, so every row's COMP tokens share the same slots.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sycojax.methods.ccm import trees
from sycojax.models import ModelConfig, forward
from sycojax.objectives import row_nll


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class CompressedMemory:
    k: jax.Array  # (L, B, M, n_kv, hd): RoPE already applied at their positions
    v: jax.Array
    text_pos: jax.Array  # (B,) text tokens seen so far (the next text position)
    turns: int = dataclasses.field(metadata={"static": True}, default=0)

    @classmethod
    def empty(cls, cfg: ModelConfig, batch: int, dtype=jnp.float32) -> CompressedMemory:
        z = jnp.zeros((cfg.num_layers, batch, 0, cfg.num_kv_heads, cfg.head_dim), dtype)
        return cls(z, z, jnp.zeros((batch,), jnp.int32), 0)

    @property
    def entries(self) -> int:
        """K/V entries per layer per conversation: n_tok per turn (concat) or n_tok (merge), + 1 with sink."""
        return int(self.k.shape[2])

    @property
    def nbytes(self) -> int:
        return int(self.k.size * self.k.dtype.itemsize + self.v.size * self.v.dtype.itemsize)


def _left_pad(rows: Sequence[Sequence[int]], pad: int, multiple: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded to a multiple of `multiple` tokens, so turns of nearby lengths share one compiled shape."""
    n = -(-max(len(r) for r in rows) // multiple) * multiple
    tokens = np.full((len(rows), n), pad, np.int32)
    valid = np.zeros((len(rows), n), bool)
    for i, r in enumerate(rows):
        tokens[i, n - len(r) :], valid[i, n - len(r) :] = r, True
    return tokens, valid


def _run(params, trainable, cfg, spec, mem_k, mem_v, tokens, valid, is_comp, positions):
    """One forward of `tokens` over the memory `(L, B, M, ...)`; returns (logits, the K/V of every slot)."""
    b, t = tokens.shape
    m = mem_k.shape[2]
    cache = {"k": jnp.concatenate([mem_k, jnp.zeros(mem_k.shape[:2] + (t,) + mem_k.shape[3:], mem_k.dtype)], 2),
             "v": jnp.concatenate([mem_v, jnp.zeros(mem_v.shape[:2] + (t,) + mem_v.shape[3:], mem_v.dtype)], 2)}
    causal = jnp.tril(jnp.ones((t, t), bool))[None] & valid[:, None, :]
    mask = jnp.concatenate([jnp.ones((b, t, m), bool), causal], axis=-1)[:, None]
    out = forward(params, tokens, cfg=cfg, positions=positions, mask=mask,
                  adapters=trees.adapters(trainable, spec, is_comp), cache=cache, cache_index=m)
    return out.logits, out.cache


def _positions(text_pos, valid, is_comp, n_tok):
    text = (valid & ~is_comp).astype(jnp.int32)
    pos = text_pos[:, None] + jnp.cumsum(text, axis=1) - 1
    j = jnp.cumsum(is_comp.astype(jnp.int32), axis=1)
    return jnp.where(is_comp, pos + j, jnp.maximum(pos, 0)) * valid, text_pos + text.sum(1)


@functools.partial(jax.jit, static_argnames=("cfg", "spec"))
def _update_jit(params, trainable, mem_k, mem_v, text_pos, tokens, valid, is_comp, *, cfg, spec):
    """(the n new COMP K/V, each row's first-token K/V, the next text position) of one compressed turn."""
    positions, text_pos = _positions(text_pos, valid, is_comp, spec.n_tok)
    _, cache = _run(params, trainable, cfg, spec, mem_k, mem_v, tokens, valid, is_comp, positions)
    comp = tuple(cache[x][:, :, -spec.n_tok :] for x in ("k", "v"))  # left padding: every row's COMP tokens last
    first = (mem_k.shape[2] + jnp.argmax(valid, axis=1))[None, :, None, None, None]  # BOS on the first turn
    bos = tuple(jnp.take_along_axis(cache[x], first, axis=2) for x in ("k", "v"))
    return comp, bos, text_pos


def update(params, trainable, cfg: ModelConfig, spec: trees.CCMSpec, mem: CompressedMemory,
           turns: Sequence[Sequence[int]], *, bos: int, sep: int, pad: int = 0) -> CompressedMemory:
    """Compress one more turn per conversation into the memory (`turns[i]` for conversation i)."""
    if len(turns) != mem.k.shape[1]:
        raise ValueError(f"{len(turns)} turns for a memory of {mem.k.shape[1]} conversations")
    comp = list(range(trees.comp_first_id(cfg), trees.comp_first_id(cfg) + spec.n_tok))
    head = bos if mem.turns == 0 else sep
    tokens, valid = _left_pad([[head, *t, *comp] for t in turns], pad)
    is_comp = jnp.asarray(tokens >= trees.comp_first_id(cfg))
    (k, v), bos_kv, text_pos = _update_jit(params, trainable, mem.k, mem.v, mem.text_pos, jnp.asarray(tokens),
                                           jnp.asarray(valid), is_comp, cfg=cfg, spec=spec)
    s = int(spec.sink and mem.turns > 0)  # entries before the COMP memory: the sink (BOS K/V) after turn 1
    sink_k, sink_v = bos_kv if spec.sink and mem.turns == 0 else (mem.k[:, :, :s], mem.v[:, :, :s])
    if mem.turns and spec.merge:  # the running mean: Mem(t) = (1 - 1/t) Mem(t-1) + COMP(t) / t
        a = 1.0 / (mem.turns + 1)
        k, v = (1 - a) * mem.k[:, :, s:] + a * k, (1 - a) * mem.v[:, :, s:] + a * v
    elif mem.turns:
        k, v = jnp.concatenate([mem.k[:, :, s:], k], 2), jnp.concatenate([mem.v[:, :, s:], v], 2)
    return CompressedMemory(jnp.concatenate([sink_k, k], 2), jnp.concatenate([sink_v, v], 2), text_pos,
                            mem.turns + 1)


def score(params, trainable, cfg: ModelConfig, spec: trees.CCMSpec, mem: CompressedMemory,
          inputs: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]], *, sep: int, eos: int,
          pad: int = 0) -> np.ndarray:
    """Per-conversation mean NLL of `O EOS` after `SEP I SEP`, read from the memory alone."""
    rows = [[sep, *i, sep, *o, eos] for i, o in zip(inputs, outputs)]
    tokens, valid = _left_pad(rows, pad)
    t = tokens.shape[1]
    w = np.zeros_like(tokens, np.float32)
    for r, o in enumerate(outputs):
        w[r, t - len(o) - 2 : t - 1] = 1.0  # positions predicting O and EOS
    return np.asarray(_score_jit(params, trainable, mem.k, mem.v, mem.text_pos, jnp.asarray(tokens), jnp.asarray(valid),
                                 jnp.asarray(w), cfg=cfg, spec=spec))


@functools.partial(jax.jit, static_argnames=("cfg", "spec"))
def _score_jit(params, trainable, mem_k, mem_v, text_pos, tokens, valid, weights, *, cfg, spec):
    is_comp = jnp.zeros(tokens.shape, bool)
    positions, _ = _positions(text_pos, valid, is_comp, spec.n_tok)
    logits, _ = _run(params, trainable, cfg, spec, mem_k, mem_v, tokens, valid, is_comp, positions)
    return row_nll(logits[:, :-1], tokens[:, 1:], weights[:, :-1])


@functools.partial(jax.jit, static_argnames=("cfg",))
def _decode_step(params, cache, tokens, positions, mask, index, *, cfg):
    out = forward(params, tokens, cfg=cfg, positions=positions, mask=mask, cache=cache, cache_index=index)
    return jnp.argmax(out.logits[:, -1], -1), out.cache


def generate(params, cfg: ModelConfig, mem: CompressedMemory, prompts: Sequence[Sequence[int]], *, eos: int,
             pad: int = 0, max_new_tokens: int = 48) -> list[list[int]]:
    """Greedy replies to `prompts` (the tokens after the memory, e.g. `SEP I SEP B:`) read from memory + prompt.

    No COMP token is decoded, so the conditional LoRA is off and the frozen base answers (as in training,
    where the output tokens see the memory only through attention)."""
    tokens, valid = _left_pad(prompts, pad)
    b, p = tokens.shape
    m, s = mem.entries, mem.entries + p + max_new_tokens
    shape = (cfg.num_layers, b, s, cfg.num_kv_heads, cfg.head_dim)
    cache = {"k": jnp.zeros(shape, mem.k.dtype).at[:, :, :m].set(mem.k),
             "v": jnp.zeros(shape, mem.v.dtype).at[:, :, :m].set(mem.v)}
    slot_ok = np.zeros((b, s), bool)
    slot_ok[:, :m], slot_ok[:, m : m + p] = True, valid
    positions = np.asarray(mem.text_pos)[:, None] + np.cumsum(valid, 1) - 1
    slot = np.arange(s)
    mask = slot_ok[:, None, None, :] & (slot[None, None, None, :] <= m + np.arange(p)[None, None, :, None])
    nxt, cache = _decode_step(params, cache, jnp.asarray(tokens), jnp.asarray(np.maximum(positions, 0) * valid),
                              jnp.asarray(mask), m, cfg=cfg)
    pos = positions[:, -1] + 1
    out, done = [[] for _ in range(b)], np.zeros(b, bool)
    for i in range(max_new_tokens):
        ids = np.asarray(nxt)
        for r in range(b):
            if not done[r]:
                done[r] = ids[r] == eos
                if not done[r]:
                    out[r].append(int(ids[r]))
        if done.all() or i == max_new_tokens - 1:
            break
        slot_ok[:, m + p + i] = True
        nxt, cache = _decode_step(params, cache, jnp.asarray(ids[:, None]), jnp.asarray(pos[:, None] + i),
                                  jnp.asarray(slot_ok[:, None, None, :]), m + p + i, cfg=cfg)
    return out
