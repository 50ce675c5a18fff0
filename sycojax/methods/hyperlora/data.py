"""HyperLoRA's data: real contexts, the query rows every context shares, and each context's cached teacher targets
and reader features.

    contexts   `real_contexts`: MT-Bench system prompts, ShareGPT first turns (personas / roles, rules and style
               instructions, other instructions) and Wikipedia lead summaries as facts, de-duplicated, each
               `<= max_tokens` long.
    rows       `query_rows`: a shared pool of real ShareGPT queries, each with the base model's own greedy reply
               (generated once, without any context): the student rows `[default system][query][reply]`, the
               same for every context, and the base's full log-probs at their reply tokens (for KL_before).
    teacher    `teacher_pass`: for each (context, query) one forward of the teacher row
               `[context as system turn][query][reply]`, many contexts per batch; it keeps the teacher's top-k
               log-probs at the reply tokens (the consolidation's cached targets), the exact KL(teacher‖base)
               there (KL_before, to keep only contexts that matter), and, from the same forward, the reader's
               pooled states over the context's turn (causal: exactly `pool_context` of it, see `reader_ids`).
    split      `split`: by context, with a fixed seed: test, validation, train.

`Dataset` holds it all as arrays (`save` / `load`, so a resumed run does not recompute it); `train_arrays` gives
the loop's examples, one per (context, query row).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from sycojax.masks.core import causal_padding, positions_from_valid
from sycojax.methods import sycomode as sm
from sycojax.methods.hyperlora.reader import mean_pool
from sycojax.methods.hyperlora.spec import HyperError
from sycojax.methods.shared import fixed_batches, padding_id
from sycojax.models import ModelConfig, forward, lm_head_weight
from sycojax.models.tokenizer import chat_ids

KINDS = ("system", "persona", "rules", "instruction", "facts")
ROLE = re.compile(r"^\W*(i want you to act|act as|acting as|you are|you're|pretend|imagine you are|role ?-?play|"
                  r"from now on|assume the role|play the role|behave like|you will act|you will be)", re.IGNORECASE)
RULE = re.compile(r"\b(always|never|only|must|do not|don't|respond|reply|tone|style|format|language|"
                  r"bullet|words|sentences|concise|formal|casual)\b", re.IGNORECASE)
FACTS = "Use these facts when you answer.\n{title}: {text}"


# --------------------------------------------------------------------------- contexts


def real_contexts(tok, *, counts: dict[str, int], max_tokens: int, min_chars: int = 40,
                  exclude: Sequence[str] = (), root=None) -> list[dict[str, str]]:
    """`{"kind", "text"}` for up to `counts[kind]` contexts of each kind (`KINDS`), in the data's file order,
    de-duplicated, each with 1..`max_tokens` tokens and not among `exclude` (the query pool)."""
    from sycojax.data import load_sharegpt_pairs, load_wikipedia_summaries, mtbench_system_prompts  # noqa: PLC0415

    bad = sorted(set(counts) - set(KINDS))
    if bad:
        raise HyperError(f"unknown context kinds {bad}; choose from {', '.join(KINDS)}")
    taken = {t.strip().lower() for t in exclude}
    out: list[dict[str, str]] = []
    n = dict.fromkeys(KINDS, 0)

    def offer(kind: str, text: str) -> None:
        text = text.strip()
        if n[kind] >= counts.get(kind, 0) or len(text) < min_chars or text.lower() in taken:
            return
        if len(tok(text, add_special_tokens=False)["input_ids"]) > max_tokens:
            return
        taken.add(text.lower())
        out.append({"kind": kind, "text": text})
        n[kind] += 1

    if counts.get("system"):
        for p in mtbench_system_prompts(root=root):
            offer("system", p["system"])
    if any(counts.get(k) for k in ("persona", "rules", "instruction")):
        for p in load_sharegpt_pairs(root=root):
            t = p["instruction"].strip()
            offer("persona" if ROLE.match(t) else "rules" if RULE.search(t) else "instruction", t)
    if counts.get("facts"):
        for d in load_wikipedia_summaries(root=root):
            offer("facts", FACTS.format(title=d["title"], text=d["text"]))
    if not out:
        raise HyperError("no contexts: every source came out empty; check config.data.counts and the data packages")
    return out


def reader_ids(tok, cfg: ModelConfig, context: str, max_tokens: int, log=None) -> list[int]:
    """What the reader reads: the context's system turn exactly as the teacher sees it (`build_prompts`'s shared
    prefix), cut to its first `max_tokens` tokens when longer (said through `log`). An empty context is refused."""
    ids = sm.build_prompts(tok, cfg, context, ["a"]).teacher_prefix
    if len(ids) > max_tokens:
        if log is not None:
            log(f"hyper: the context's turn has {len(ids)} tokens; the reader reads its first {max_tokens} "
                "(HyperConfig.max_context_tokens) and ignores the rest")
        ids = ids[:max_tokens]
    return ids


# --------------------------------------------------------------------------- the shared query rows


@dataclasses.dataclass
class Rows:
    """The student rows every context shares: `[default system][query][base reply]` (right-padded)."""

    queries: list[str]
    student: list[list[int]]  # the student prompts
    responses: list[list[int]]  # the base model's greedy replies (EOS appended when it stopped)
    tokens: np.ndarray  # (Q, T) int32
    resp_pos: np.ndarray  # (Q, R) int32: the position whose logits predict reply token j
    resp_weights: np.ndarray  # (Q, R) float32
    base_logprobs: np.ndarray  # (Q, R, V) float32: the base model's (no context) at the reply tokens


@functools.partial(jax.jit, static_argnames="cfg")
def _reply_logprobs(params, tokens, resp_pos, *, cfg):
    valid = jnp.ones(tokens.shape, bool)  # right padding: causal alone keeps the real tokens clean
    out = forward(params, tokens, cfg=cfg, positions=positions_from_valid(valid), mask=causal_padding(valid),
                  return_logits=False)
    h = jnp.take_along_axis(out.final_hidden, resp_pos[..., None], axis=1)
    return jax.nn.log_softmax(jnp.einsum("brd,vd->brv", h, lm_head_weight(params, cfg)).astype(jnp.float32), -1)


def query_rows(params, cfg: ModelConfig, tok, queries: Sequence[str], *, response_tokens: int,
               batch_size: int = 8) -> Rows:
    """The shared rows: each query's student prompt, the base model's greedy reply (once, no context), and the
    base's log-probs at the reply tokens."""
    if not queries:
        raise HyperError("no queries for the shared rows; give config.data.pool_queries >= 1")
    student = [chat_ids(tok, q) for q in queries]
    responses = sm.teacher_responses(params, cfg, sm.Prompts([], student, student), max_new_tokens=response_tokens,
                                     batch_size=batch_size, desc="base replies")
    tokens, resp_pos, resp_w = sm.response_rows(student, responses, padding_id(cfg, tok))
    lp = []
    for rows, n in fixed_batches(list(range(len(queries))), batch_size):
        lp.append(np.asarray(_reply_logprobs(params, jnp.asarray(tokens[rows]), jnp.asarray(resp_pos[rows]),
                                             cfg=cfg))[:n])
    return Rows(list(queries), student, responses, tokens, resp_pos, resp_w, np.concatenate(lp))


# --------------------------------------------------------------------------- the teacher, once per context


def topk_tail_kl(t_top, s_top):
    """KL(teacher‖student) on the teacher's top k plus one class for the rest of the vocabulary, from
    full-vocabulary log-probs at the teacher's top-k ids `(..., k)`: a lower bound of the exact KL (coarser
    classes), 0 iff the two agree on those ids and on the rest's total mass. Works on jnp or numpy arrays."""
    xp = jnp if isinstance(t_top, jax.Array) or isinstance(s_top, jax.Array) else np
    p = xp.exp(t_top)
    p_rest = xp.clip(1.0 - p.sum(-1), 0.0, 1.0)
    s_rest = xp.clip(1.0 - xp.exp(s_top).sum(-1), 1e-6, 1.0)
    rest = xp.where(p_rest > 0, p_rest * (xp.log(xp.maximum(p_rest, 1e-30)) - xp.log(s_rest)), 0.0)
    return (p * (t_top - s_top)).sum(-1) + rest


@functools.partial(jax.jit, static_argnames=("cfg", "topk", "layers"))
def _teacher_rows(params, tokens, valid, prefix_len, gather_pos, base_lp, *, cfg, topk, layers):
    out = forward(params, tokens, cfg=cfg, positions=positions_from_valid(valid), mask=causal_padding(valid),
                  return_hidden=True, return_logits=False)
    in_prefix = jnp.arange(tokens.shape[1])[None] < prefix_len[:, None]
    pooled = mean_pool(out.hidden_states, in_prefix, layers)  # the context's turn: causal, so = pool_context
    h = jnp.take_along_axis(out.final_hidden, gather_pos[..., None], axis=1)
    lp = jax.nn.log_softmax(jnp.einsum("brd,vd->brv", h, lm_head_weight(params, cfg)).astype(jnp.float32), -1)
    kl = jnp.sum(jnp.exp(lp) * (lp - base_lp), axis=-1)  # exact KL(teacher ‖ base), (B, R)
    top, idx = jax.lax.top_k(lp, topk)
    kl_top = topk_tail_kl(top, jnp.take_along_axis(base_lp, idx, axis=-1))
    return pooled, idx.astype(jnp.int32), top, kl, kl_top


@dataclasses.dataclass
class Dataset:
    """Every context's cached targets on its query rows (`row[i]`: which shared row context i uses)."""

    contexts: list[dict[str, str]]  # {"kind", "text"} per context
    rows: Rows
    row: np.ndarray  # (N,) int32: context i's query row
    pooled: np.ndarray  # (N, n, D) float32: the reader's pooled states of context i
    topk_idx: np.ndarray  # (N, R, k) int32: the teacher's (with context i) top-k at row[i]'s reply tokens
    topk_logprobs: np.ndarray  # (N, R, k) float32
    kl_before: np.ndarray  # (N,) exact KL(teacher‖base) per reply token on its row (nats)
    kl_before_topk: np.ndarray  # (N,) the same on the teacher's top k + the rest (`topk_tail_kl`)

    def subset(self, idx) -> Dataset:
        idx = np.asarray(idx, np.int64)
        return dataclasses.replace(self, contexts=[self.contexts[i] for i in idx], row=self.row[idx],
                                   pooled=self.pooled[idx], topk_idx=self.topk_idx[idx],
                                   topk_logprobs=self.topk_logprobs[idx], kl_before=self.kl_before[idx],
                                   kl_before_topk=self.kl_before_topk[idx])

    def __len__(self) -> int:
        return len(self.contexts)

    def train_arrays(self) -> dict[str, np.ndarray]:
        """The loop's examples, one per context: its pooled states, its student row and the teacher's targets."""
        pos, w = self.rows.resp_pos[self.row], self.rows.resp_weights[self.row]
        return {"pooled": self.pooled, "tokens": self.rows.tokens[self.row], "resp_pos": pos, "resp_weights": w,
                "topk_idx": self.topk_idx, "topk_logprobs": self.topk_logprobs,
                "num_tokens": sm.row_lengths(pos, w, np).astype(np.int32)}

    # -- files (numpy arrays + JSON; a resumed run reads them back instead of recomputing)
    ARRAYS = ("row", "pooled", "topk_idx", "topk_logprobs", "kl_before", "kl_before_topk")
    ROW_ARRAYS = ("tokens", "resp_pos", "resp_weights", "base_logprobs")

    def save(self, path: Path, key: dict) -> None:
        path.mkdir(parents=True, exist_ok=True)
        arrays = {k: getattr(self, k) for k in self.ARRAYS}
        arrays.update({f"rows_{k}": getattr(self.rows, k) for k in self.ROW_ARRAYS if k != "base_logprobs"})
        np.savez(path / "data.tmp.npz", **arrays)
        (path / "data.tmp.npz").replace(path / "data.npz")
        meta = {"key": key, "contexts": self.contexts, "queries": self.rows.queries, "student": self.rows.student,
                "responses": self.rows.responses}
        (path / "data.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, path: Path, key: dict) -> Dataset | None:
        """The dataset saved at `path` with this `key`, else None (absent or made with other settings)."""
        if not (path / "data.json").is_file() or not (path / "data.npz").is_file():
            return None
        meta = json.loads((path / "data.json").read_text())
        if meta.get("key") != key:
            return None
        with np.load(path / "data.npz") as f:
            a = {k: f[k] for k in f.files}
        rows = Rows(meta["queries"], meta["student"], meta["responses"], a["rows_tokens"], a["rows_resp_pos"],
                    a["rows_resp_weights"], np.zeros((0,), np.float32))
        return cls(meta["contexts"], rows, **{k: a[k] for k in cls.ARRAYS})


def teacher_pass(params, cfg: ModelConfig, tok, contexts: Sequence[dict[str, str]], rows: Rows, *, topk: int,
                 layers: tuple[int, ...], seed: int = 0, batch_size: int = 16, log=print) -> Dataset:
    """Each context with one query row drawn from the pool (seeded): the teacher's targets, KL_before and the
    reader's pooled states, in batches of `batch_size` contexts sorted by length (few compiled widths)."""
    n = len(contexts)
    if n == 0:
        raise HyperError("no contexts to run the teacher on")
    pick = np.random.default_rng([seed, 23]).integers(0, len(rows.queries), n).astype(np.int32)
    pad = padding_id(cfg, tok)
    prompts, prefix = [], []
    for c, q in zip(contexts, pick):
        p = sm.build_prompts(tok, cfg, c["text"], [rows.queries[q]])
        prompts.append(p.teacher_prefix + p.teacher_suffix[0])
        prefix.append(len(p.teacher_prefix))
    r_max = rows.resp_pos.shape[1]
    lengths = np.array([len(p) + len(rows.responses[q]) for p, q in zip(prompts, pick)])
    order = np.argsort(lengths, kind="stable")
    d, k = cfg.hidden_size, topk
    pooled = np.zeros((n, len(layers), d), np.float32)
    idx_all = np.zeros((n, r_max, k), np.int32)
    lp_all = np.zeros((n, r_max, k), np.float32)
    kl_all, kl_top_all = np.zeros(n, np.float32), np.zeros(n, np.float32)
    base_lp = jnp.asarray(rows.base_logprobs)
    for chunk, real in tqdm(list(fixed_batches(list(order), batch_size)), desc="teacher targets", leave=False):
        width = sm.bucket_length(int(lengths[chunk].max()), 32)
        tokens, resp_pos, resp_w = sm.response_rows([prompts[i] for i in chunk],
                                                    [rows.responses[pick[i]] for i in chunk], pad, width, r_max)
        valid = np.arange(width)[None] < lengths[chunk][:, None]
        out = _teacher_rows(params, jnp.asarray(tokens), jnp.asarray(valid), jnp.asarray(np.array(prefix)[chunk]),
                            jnp.asarray(resp_pos), base_lp[jnp.asarray(pick[chunk])], cfg=cfg, topk=k, layers=layers)
        p, idx, lp, kl, kl_top = (np.asarray(x)[:real] for x in out)
        sel = np.asarray(chunk[:real])
        w = resp_w[:real]
        pooled[sel], idx_all[sel], lp_all[sel] = p, idx, lp
        kl_all[sel] = (kl * w).sum(1) / np.maximum(w.sum(1), 1.0)
        kl_top_all[sel] = (kl_top * w).sum(1) / np.maximum(w.sum(1), 1.0)
    return Dataset(list(contexts), rows, pick, pooled, idx_all, lp_all, kl_all, kl_top_all)


# --------------------------------------------------------------------------- filter and split


def keep_mattering(data: Dataset, min_kl: float) -> Dataset:
    """Only the contexts whose KL_before (teacher with it vs base without it, on its row) is >= `min_kl`."""
    kept = np.flatnonzero(data.kl_before >= min_kl)
    if len(kept) == 0:
        raise HyperError(f"no context has KL_before >= {min_kl} (max {float(data.kl_before.max()):.4f}); "
                         "lower config.data.min_kl")
    return data.subset(kept)


def split(n: int, *, n_test: int, n_val: int, seed: int) -> dict[str, np.ndarray]:
    """Indices of the test / val / train contexts: a seeded permutation cut in that order (disjoint by context)."""
    if n_test + n_val >= n:
        raise HyperError(f"{n} contexts cannot hold {n_test} test + {n_val} validation + >= 1 training contexts; "
                         "lower config.data.n_test / n_val or add contexts")
    perm = np.random.default_rng([seed, 7]).permutation(n)
    return {"test": np.sort(perm[:n_test]), "val": np.sort(perm[n_test : n_test + n_val]),
            "train": np.sort(perm[n_test + n_val :])}
