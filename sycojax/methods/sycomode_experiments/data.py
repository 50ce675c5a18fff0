"""The experiments' raw-text inputs: the cases (letter runs, facts, the JAXA passage), the prompt layout
(`RawFormat`: start token, answer cue), teacher / student prompts for probes, and the probes themselves.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import ml_collections
import numpy as np

from sycojax.adapters import insert_after_bos
from sycojax.methods import sycomode as sm
from sycojax.models import ModelConfig

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
