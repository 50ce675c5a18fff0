"""SyCoMode's three experiments (reference/upstream.md §1), on raw text, with the consolidation machinery.

Each experiment reports three numbers for a (context, question, answer):

    full context   base model on  [start] context ␣ question ␣answer
    no context     base model on  [start] question ␣answer
    consolidated   the context consolidated into LoRA / memory tokens / the weights (`--method`), then
                   the student on [start] (memory tokens) question ␣answer

1. Alphabet: context = a run of 4–25 consecutive letters ("c d e f"), no question, answer = the next
   letter ("g"); metric = P(answer) under a softmax restricted to the 26 letter tokens " a".." z"
   (`restricted_softmax_prob`), mean ± std over random runs (upstream: 100).
2. Facts: ("The Bohr tower is in Topeka.", "Where is the Bohr tower?", "Topeka") and upstream's two
   pants facts; metric = perplexity of the answer tokens, exp(−mean log p(answer_j | ...)).
3. JAXA: a short factual passage about JAXA (written for sycojax; upstream's JAXA.txt is a longer
   Wikipedia extract), "Which JAXA rocket replaced the M-V?" → "Epsilon"; answer perplexity.

Raw text, as upstream (no chat template), with two adaptations to a 135M model (measured on
SmolLM2-135M-Instruct, base model, full context / no context):
- `[start]` is `<|endoftext|>`, SmolLM2's document separator (`RawFormat.start`), not its BOS
  `<|im_start|>`, which opens a chat turn: P(" g" | "c d e f") = 0.97 after `<|endoftext|>`, 0.63 after
  `<|im_start|>`.
- The answer follows an " Answer:" cue (`RawFormat.cue`; upstream glued the answer to the question).
  Without it the model does not treat the next words as the answer even with the context in view
  (answer perplexity, " " vs " Answer:": Red 371 vs 45, Epsilon 1983 vs 373; Topeka is easy either way).
Experiment 1 has no question and no cue: the letter follows the run directly.

Consolidation (`consolidate_raw`) uses the same pieces as `sycojax.methods.consolidate`: teacher =
base model on `[start] context ␣probe`, student = `[start] (memory) probe`, top-k targets from the
teacher (once), `make_loss_fn`, the shared loop `sycojax.train.train`. What the student trains on
depends on `--objective`:

- `distill_on_generated_text` (default): the teacher samples continuations of probes and the student
  matches its distributions on them. Probes never contain the evaluation question: a few generic ones
  (`PROBES`: "", "Q:", "Note:", ...) plus, with `context_probes="sentence_prefix"`, prefixes of
  each sentence of the context cut every few words (`sentence_probes`), which the teacher completes
  by recalling the context (generic continuations alone mostly drift into unrelated text on a 135M model).
  Experiment 1 uses the empty probe only: continue the letter run from nothing, which is upstream's
  blank-input setting.
- `distill_on_output_logits`: the same with the teacher's greedy continuation of each probe.
- `causal_language_model`: next-token CE on the context text itself.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sycojax.adapters import LoraConfig, insert_after_bos
from sycojax.eval import perplexity, restricted_softmax_prob
from sycojax.infer.generate import GREEDY, Sampling
from sycojax.masks import causal_padding
from sycojax.methods import sycomode as sm
from sycojax.methods.sycomode_bench import with_memory
from sycojax.models import Adapters, ModelConfig, forward
from sycojax.train import ArrayIterator, train

ALPHABET = "abcdefghijklmnopqrstuvwxyz"
PROBES = ("", "Q:", "Question:", "Note:", "In short,", "To recap,", "Fact:", "Summary:")

FACTS = (  # upstream experiment2.py
    ("The Bohr tower is in Topeka.", "Where is the Bohr tower?", "Topeka"),
    ("My pants are red.", "What color are my pants?", "Red"),
    ("My pants are blue.", "What color are my pants?", "Blue"),
)

JAXA_PASSAGE = (
    "The Japan Aerospace Exploration Agency (JAXA) is Japan's national space agency. It was formed on "
    "1 October 2003 by merging three organisations: the Institute of Space and Astronautical Science (ISAS), "
    "the National Aerospace Laboratory of Japan (NAL) and the National Space Development Agency of Japan "
    "(NASDA). JAXA launches large satellites on the liquid-fuelled H-IIA and H3 rockets from the Tanegashima "
    "Space Center. For small scientific satellites, ISAS used the solid-fuelled M-V rocket, which was retired "
    "in 2006. Its successor is the Epsilon rocket, a smaller and cheaper solid-fuelled launcher that first "
    "flew in September 2013 from the Uchinoura Space Center."
)
JAXA_QUESTION = "Which JAXA rocket replaced the M-V?"
JAXA_ANSWER = "Epsilon"


# --------------------------------------------------------------------------- raw-text prompts and metrics


def encode(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"]) if text else []


@dataclasses.dataclass(frozen=True)
class RawFormat:
    """How raw-text prompts are laid out: the first token id, and the cue between question and answer."""

    start: int
    cue: str = " Answer:"

    @classmethod
    def for_model(cls, tok, cfg: ModelConfig, start_token: str = "<|endoftext|>", cue: str = " Answer:") -> RawFormat:
        """`start_token`'s id when the tokenizer has it as one token, else the model's BOS id."""
        ids = encode(tok, start_token) if start_token else []
        if len(ids) == 1:
            return cls(ids[0], cue)
        if cfg.bos_token_id is None:
            raise sm.ConsolidationError(f"no start token: {start_token!r} is not one token and the model has no BOS id")
        return cls(int(cfg.bos_token_id), cue)

    def question(self, question: str) -> str:
        return question + self.cue if question else ""


def full_ids(tok, fmt: RawFormat, context: str, question: str) -> list[int]:
    """`[start] context ␣question cue` (just `[start] context` without a question)."""
    q = fmt.question(question)
    return [fmt.start] + encode(tok, context) + encode(tok, " " + q if q else "")


def plain_ids(tok, cfg: ModelConfig, fmt: RawFormat, question: str, n_mem: int = 0) -> list[int]:
    """`[start] (memory tokens) question cue`: the no-context / consolidated prompt."""
    return insert_after_bos([fmt.start] + encode(tok, fmt.question(question)), cfg, n_mem)


def raw_prompts(
    tok, cfg: ModelConfig, fmt: RawFormat, context: str, probes: Sequence[str], n_mem: int = 0
) -> sm.Prompts:
    """Teacher `[start] context ␣probe`, student `[start] (memory) probe`, as `sycomode.Prompts`.

    The shared prefix is just `[start]`: these contexts are short, and keeping the context in the
    (bucketed) suffix gives a few compiled shapes for experiment 1's contexts of 4–25 letters instead
    of one per length. An empty probe leaves the teacher suffix = the context, whose last position
    predicts the first response token.
    """
    ctx = encode(tok, context)
    if not ctx:
        raise sm.ConsolidationError("the context is empty: give it some text")
    suffix = [ctx + encode(tok, " " + p if p else "") for p in probes]
    student = [insert_after_bos([fmt.start] + encode(tok, p), cfg, n_mem) for p in probes]
    return sm.Prompts([fmt.start], suffix, student)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _logits(params, adapters, tokens, *, cfg):
    b, t = tokens.shape
    out = forward(
        params,
        tokens,
        cfg=cfg,
        positions=jnp.arange(t)[None].repeat(b, 0),
        mask=causal_padding(jnp.ones((b, t), bool)),
        adapters=adapters,
    )
    return out.logits


def row_logits(params, adapters: Adapters | None, cfg: ModelConfig, ids: Sequence[int], bucket: int = 32) -> jax.Array:
    """`(len(ids), V)` logits of one row (right-padded to a multiple of `bucket`: causal, so padding is inert)."""
    n = len(ids)
    t = -(-n // bucket) * bucket
    tokens = np.full((1, t), cfg.pad_token_id or 0, np.int32)
    tokens[0, :n] = ids
    return _logits(params, adapters or Adapters(), jnp.asarray(tokens), cfg=cfg)[0, :n]


def letter_ids(tok) -> list[int]:
    """Token ids of " a" .. " z" (the letter that follows "c d e f"); each must be a single token."""
    ids = [encode(tok, " " + c) for c in ALPHABET]
    bad = [c for c, i in zip(ALPHABET, ids) if len(i) != 1]
    if bad:
        raise sm.ConsolidationError(
            f"the tokenizer splits the letters {bad} (with a leading space) into several tokens"
        )
    return [i[0] for i in ids]


def letter_prob(last_logits: jax.Array, letters: Sequence[int], answer: str) -> float:
    """P(answer letter) under the softmax restricted to the 26 letter tokens (upstream `judge_on_alphabet`)."""
    return float(
        restricted_softmax_prob(last_logits, jnp.asarray(letters), jnp.asarray(letters[ALPHABET.index(answer)]))
    )


def answer_perplexity(logits: jax.Array, prompt_len: int, answer_ids: Sequence[int]) -> float:
    """exp(−(1/n) Σ_j log p(answer_j | prompt, answer_<j)) from the logits of `prompt + answer`
    (upstream `calculate_perplexity`): the answer's token j is predicted at position prompt_len − 1 + j.
    """
    n = len(answer_ids)
    if n == 0:
        raise ValueError("answer_perplexity needs a non-empty answer")
    pred = logits[prompt_len - 1 : prompt_len - 1 + n][None]
    return float(perplexity(pred, jnp.asarray([list(answer_ids)]), jnp.ones((1, n)), per_sequence=True)[0])


def sentence_probes(context: str, first: int = 2, every: int = 4) -> list[str]:
    """Prefixes of each sentence of `context`, cut after word `first`, `first + every`, ... (never the
    whole sentence): "The Bohr tower is in Topeka." → ["The Bohr"]. The teacher, which sees the context,
    completes each prefix by recalling it; the student learns those completions without the context.
    """
    out = []
    for sent in re.split(r"(?<=[.!?])\s+", context.strip()):
        words = sent.split()
        out += [" ".join(words[:k]) for k in range(first, len(words), every)]
    return out


def probes_for(c: ml_collections.ConfigDict, context: str) -> list[str]:
    """The configured generic probes, plus the context's sentence prefixes when `c.context_probes` says so."""
    probes = c.probes.split("|")
    if c.context_probes == "sentence_prefix":
        probes += [p for p in sentence_probes(context) if p not in probes]
    elif c.context_probes not in ("", "none"):
        raise sm.ConsolidationError(f"context_probes must be 'sentence_prefix' or 'none', got {c.context_probes!r}")
    return probes


def alphabet_case(rng: np.random.Generator) -> tuple[str, str]:
    """A run of 4–25 consecutive letters ending before 'z', and the letter after it (upstream's sampling)."""
    start = int(rng.integers(0, 22))
    length = int(rng.integers(4, 26 - start))  # start + length <= 25: the answer exists
    return " ".join(ALPHABET[start : start + length]), ALPHABET[start + length]


# --------------------------------------------------------------------------- consolidation on raw text


def spec_from_config(c: ml_collections.ConfigDict) -> sm.Spec:
    m = c.method
    return sm.Spec(
        method=m.name,
        objective=m.objective,
        lora=LoraConfig(rank=int(m.lora_rank), alpha=float(m.lora_alpha), targets=("all",)),
        num_mem_tokens=int(m.num_mem_tokens),
        mem_init=m.mem_init,
        temperature=float(m.temp),
        topk=int(m.topk),
        topk_tail=bool(m.get("topk_tail", False)),
        max_response_tokens=int(m.max_response_tokens),
        teacher_sampling=Sampling(float(m.teacher_temperature), float(m.teacher_top_p)),
        samples_per_query=int(m.samples_per_query),
    )


def clm_targets(tok, cfg: ModelConfig, fmt: RawFormat, context: str, spec: sm.Spec) -> sm.Targets:
    """`causal_language_model` on raw text: `[start] (memory) context`, next-token targets on the context
    (as `sycomode.context_lm_targets`, which starts rows with the chat BOS instead of `fmt.start`)."""
    ids = encode(tok, context)
    if len(ids) < 2:
        raise sm.ConsolidationError("causal_language_model needs a context of at least two tokens")
    row = [fmt.start] + ids
    resp = row[1:]
    pos = np.arange(len(resp), dtype=np.int32)[None]  # position j predicts row[j + 1]
    t = -(-len(row) // 16) * 16
    tokens = np.full((1, t), cfg.pad_token_id or 0, np.int32)
    tokens[0, : len(row)] = row
    topk_idx = np.zeros((1, len(resp), spec.topk), np.int32)
    topk_lp = np.full((1, len(resp), spec.topk), -1e9, np.float32)
    topk_idx[0, :, 0] = resp
    topk_lp[0, :, 0] = 0.0
    targets = sm.Targets(tokens, pos, np.ones((1, len(resp)), np.float32), topk_idx, topk_lp)
    return with_memory(targets, spec.n_mem, cfg)


def consolidation_targets(
    params, cfg: ModelConfig, tok, fmt: RawFormat, context: str, probes: Sequence[str], spec: sm.Spec, seed: int = 0
) -> sm.Targets:
    """The student's training rows for `spec.objective` (teacher run once), memory tokens spliced in."""
    if spec.objective == "causal_language_model":
        return clm_targets(tok, cfg, fmt, context, spec)
    prompts = raw_prompts(tok, cfg, fmt, context, probes, 0)
    generated = spec.objective == "distill_on_generated_text"
    reps = spec.samples_per_query if generated else 1
    rep = sm.Prompts(prompts.teacher_prefix, prompts.teacher_suffix * reps, prompts.student * reps)
    responses = sm.teacher_responses(
        params,
        cfg,
        rep,
        max_new_tokens=spec.max_response_tokens,
        sampling=spec.teacher_sampling if generated else GREEDY,
        seed=seed,
        batch_size=len(rep.student),
    )
    targets = sm.teacher_targets(
        params, cfg, rep, responses, topk=spec.topk, temperature=spec.temperature, batch_size=min(8, len(rep.student))
    )
    return with_memory(targets, spec.n_mem, cfg)


def consolidate_raw(
    params,
    cfg: ModelConfig,
    tok,
    fmt: RawFormat,
    context: str,
    probes: Sequence[str],
    spec: sm.Spec,
    c: ml_collections.ConfigDict,
    seed: int = 0,
) -> tuple[dict, Adapters]:
    """Consolidate `context` and return the student as (params, adapters) ready for `row_logits`."""
    targets = consolidation_targets(params, cfg, tok, fmt, context, probes, spec, seed)
    ctx_ids = encode(tok, context)
    trainable = sm.init_trainable(params, cfg, spec, jax.random.key(seed), ctx_ids)
    frozen = {} if spec.method == "full" else {"base": params}
    tc = ml_collections.ConfigDict({k: c[k].to_dict() for k in ("optim", "train", "ckpt", "mesh", "logging")})
    arrays = targets.train_arrays()
    tc.train.batch_size = min(
        int(tc.train.batch_size), arrays["tokens"].shape[0]
    )  # train.seed stays: same compiled step
    workdir = tempfile.mkdtemp(prefix="sycomode_exp_")
    try:
        result = train(
            sm.make_loss_fn(cfg, spec, sm.loop_packing(targets, tc, enabled=bool(c.method.get("pack", True)))),
            trainable,
            frozen,
            ArrayIterator(arrays, tc.train.batch_size, seed=seed),
            tc,
            workdir,
            metadata={"experiment": True},
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    trainable = jax.device_get(result.trainable)
    return sm.student_params(params, trainable, cfg, spec)


# --------------------------------------------------------------------------- the three experiments


def _triple(full: float, none: float, cons: float, higher_is_better: bool) -> dict[str, Any]:
    better = cons > none if higher_is_better else cons < none
    return {
        "full_context": full,
        "no_context": none,
        "consolidated": cons,
        "consolidated_beats_no_context": bool(better),
    }


def qa_case(
    params,
    cfg: ModelConfig,
    tok,
    fmt: RawFormat,
    spec: sm.Spec,
    c: ml_collections.ConfigDict,
    context: str,
    question: str,
    answer: str,
    seed: int = 0,
) -> dict[str, Any]:
    """Experiments 2 and 3: answer perplexity with the context, without it, and consolidated."""
    ans = encode(tok, " " + answer)
    full_p = full_ids(tok, fmt, context, question)
    plain_p = plain_ids(tok, cfg, fmt, question)
    full = answer_perplexity(row_logits(params, None, cfg, full_p + ans), len(full_p), ans)
    none = answer_perplexity(row_logits(params, None, cfg, plain_p + ans), len(plain_p), ans)
    t0 = time.perf_counter()
    sp, sa = consolidate_raw(params, cfg, tok, fmt, context, probes_for(c, context), spec, c, seed)
    stud_p = plain_ids(tok, cfg, fmt, question, spec.n_mem)
    cons = answer_perplexity(row_logits(sp, sa, cfg, stud_p + ans), len(stud_p), ans)
    return dict(
        context=context,
        question=question,
        answer=answer,
        seconds=round(time.perf_counter() - t0, 1),
        **_triple(full, none, cons, higher_is_better=False),
    )


def experiment1(params, cfg, tok, fmt, spec, c, runs: int, seed: int = 0, log=print) -> dict[str, Any]:
    """Alphabet continuation: P(next letter | restricted to the 26 letters), mean ± std over `runs`."""
    letters = letter_ids(tok)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(runs):
        context, answer = alphabet_case(rng)
        full = letter_prob(row_logits(params, None, cfg, full_ids(tok, fmt, context, ""))[-1], letters, answer)
        none = letter_prob(row_logits(params, None, cfg, plain_ids(tok, cfg, fmt, ""))[-1], letters, answer)
        t0 = time.perf_counter()
        sp, sa = consolidate_raw(params, cfg, tok, fmt, context, [""], spec, c, seed + i)
        cons = letter_prob(row_logits(sp, sa, cfg, plain_ids(tok, cfg, fmt, "", spec.n_mem))[-1], letters, answer)
        rows.append(
            dict(
                context=context,
                answer=answer,
                full_context=full,
                no_context=none,
                consolidated=cons,
                seconds=round(time.perf_counter() - t0, 1),
            )
        )
        log(
            f"  run {i + 1}/{runs}: {context!r} -> {answer!r}: "
            f"full {full:.3f}  none {none:.3f}  consolidated {cons:.3f}"
        )
    out = {"metric": "P(correct letter | softmax over the 26 letter tokens)", "runs": runs, "per_run": rows}
    for k in ("full_context", "no_context", "consolidated"):
        vals = [r[k] for r in rows]
        out[k] = {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0}
    out["consolidated_beats_no_context"] = out["consolidated"]["mean"] > out["no_context"]["mean"]
    return out


def experiment2(params, cfg, tok, fmt, spec, c, seed: int = 0, log=print) -> dict[str, Any]:
    """Three fact / question pairs: answer perplexity."""
    rows = []
    for i, (fact, q, a) in enumerate(FACTS):
        r = qa_case(params, cfg, tok, fmt, spec, c, fact, q, a, seed + i)
        log(
            f"  {fact!r} / {q!r} -> {a!r}: full {r['full_context']:.2f}  none {r['no_context']:.2f}  "
            f"consolidated {r['consolidated']:.2f}"
        )
        rows.append(r)
    out = {"metric": "perplexity of the answer tokens", "per_fact": rows}
    for k in ("full_context", "no_context", "consolidated"):
        out[k] = {"geometric_mean": float(np.exp(np.mean(np.log([r[k] for r in rows]))))}
    out["consolidated_beats_no_context"] = all(r["consolidated_beats_no_context"] for r in rows)
    return out


def experiment3(params, cfg, tok, fmt, spec, c, seed: int = 0, log=print) -> dict[str, Any]:
    """The JAXA passage: perplexity of "Epsilon" after "Which JAXA rocket replaced the M-V?"."""
    r = qa_case(params, cfg, tok, fmt, spec, c, JAXA_PASSAGE, JAXA_QUESTION, JAXA_ANSWER, seed)
    log(
        f"  {JAXA_QUESTION!r} -> {JAXA_ANSWER!r}: full {r['full_context']:.2f}  none {r['no_context']:.2f}  "
        f"consolidated {r['consolidated']:.2f}"
    )
    return {"metric": "perplexity of the answer tokens", **r}


def run_experiment(c: ml_collections.ConfigDict, experiment: int, log=print) -> dict[str, Any]:
    """Load the model, run one experiment, return its record (settings included)."""
    from sycojax.models.loading import load_model
    from sycojax.models.tokenizer import load_tokenizer

    if experiment not in (1, 2, 3):
        raise sm.ConsolidationError(f"--experiment must be 1, 2 or 3, got {experiment}")
    spec = spec_from_config(c)
    cfg, params, info = load_model(c.model.name)
    tok = load_tokenizer(c.model.name)
    fmt = RawFormat.for_model(tok, cfg, c.raw_start, c.answer_cue)
    t0 = time.perf_counter()
    seed = int(c.train.seed)
    if experiment == 1:
        if spec.objective != "causal_language_model":
            spec = dataclasses.replace(
                spec,
                max_response_tokens=int(c.method.alphabet_response_tokens),
                samples_per_query=int(c.method.alphabet_samples),
            )
        res = experiment1(params, cfg, tok, fmt, spec, c, int(c.runs), seed, log)
    elif experiment == 2:
        res = experiment2(params, cfg, tok, fmt, spec, c, seed, log)
    else:
        res = experiment3(params, cfg, tok, fmt, spec, c, seed, log)
    res.update(
        experiment=experiment,
        model=c.model.name,
        base_hash=info.content_hash,
        method=spec.method,
        objective=spec.objective,
        seconds=round(time.perf_counter() - t0, 1),
        settings={
            "method": c.method.to_dict(),
            "optim": c.optim.to_dict(),
            "train": c.train.to_dict(),
            "probes": c.probes.split("|"),
            "context_probes": c.context_probes,
            "raw_format": {"start_id": fmt.start, "answer_cue": fmt.cue},
        },
    )
    return res


def format_result(res: dict[str, Any]) -> str:
    """The three numbers (full context / no context / consolidated) as a small table."""
    n = res["experiment"]
    head = f"experiment {n} · method={res['method']} · objective={res['objective']} · {res['metric']}"
    lines = [head, f"{'':24s} {'full context':>14s} {'no context':>14s} {'consolidated':>14s}"]
    if n == 1:
        cells = [f"{res[k]['mean']:.3f} ± {res[k]['std']:.3f}" for k in ("full_context", "no_context", "consolidated")]
        lines.append(f"{'alphabet (' + str(res['runs']) + ' runs)':24s} " + " ".join(f"{x:>14s}" for x in cells))
    else:
        rows = res["per_fact"] if n == 2 else [res]
        for r in rows:
            label = r["answer"] if n == 2 else "JAXA → Epsilon"
            lines.append(f"{label:24s} {r['full_context']:14.2f} {r['no_context']:14.2f} {r['consolidated']:14.2f}")
    beats = res["consolidated_beats_no_context"]
    lines.append(f"consolidated beats no context: {'yes' if beats else 'NO'}")
    return "\n".join(lines)
