"""Documents to memorise: `{"id", "text"}` JSONL files or Wikipedia lead summaries, cut into word windows.

    docs = load_documents_jsonl("my_docs.jsonl")            # one {"id": ..., "text": ...} per line
    docs = wikipedia_documents(200)                          # the default set (DATA.md)
    rows = document_windows(docs, words=128, stride=64, max_windows=10)   # upstream's segmentation

Every problem with a file (missing, not JSON on line N, a record without "id"/"text", duplicate ids,
nothing left) is a `DataError` naming the line and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

from sycojax.data.sources import DataError, EmptyDatasetError
from sycojax.data.wikipedia import load_wikipedia_summaries


@dataclasses.dataclass(frozen=True)
class Document:
    id: str
    text: str


@dataclasses.dataclass(frozen=True)
class Window:
    doc: int  # index of the document in the list given to `document_windows` (its key row)
    index: int  # window number within the document
    text: str


def load_documents_jsonl(path: str | os.PathLike) -> list[Document]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"--documents_file {str(p)!r} does not exist; give a JSONL file with one "
                        '{"id": ..., "text": ...} object per line')
    docs, seen = [], set()
    for n, line in enumerate(p.read_text(encoding="utf-8", errors="strict").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{n}: not a JSON object ({e.msg}); each line must be one "
                            '{"id": ..., "text": ...}') from None
        if not isinstance(rec, dict) or "id" not in rec or not str(rec.get("text", "")).strip():
            raise DataError(f'{p}:{n}: a record needs an "id" and a non-empty "text"')
        doc_id = str(rec["id"])
        if doc_id in seen:
            raise DataError(f"{p}:{n}: duplicate id {doc_id!r}; ids name documents (and their keys) uniquely")
        seen.add(doc_id)
        docs.append(Document(doc_id, str(rec["text"]).strip()))
    if not docs:
        raise EmptyDatasetError(f"{p} holds no documents; it needs one JSON object per line")
    return docs


def wikipedia_documents(n: int, *, min_words: int = 40, root=None) -> list[Document]:
    """The first `n` Wikipedia lead summaries with at least `min_words` words (file order: deterministic)."""
    docs = [Document(d["title"], d["text"]) for d in load_wikipedia_summaries(root=root)
            if len(d["text"].split()) >= min_words][:n]
    if len(docs) < n:
        raise EmptyDatasetError(f"only {len(docs)} Wikipedia summaries have >= {min_words} words; ask for fewer")
    return docs


def document_windows(docs: Sequence[Document], *, words: int = 128, stride: int = 64,
                     max_windows: int = 10) -> list[Window]:
    """Windows of `words` words every `stride` words, at most `max_windows` per document (upstream: 128,
    64, 10); a document shorter than one window is one window."""
    if words < 1 or stride < 1 or max_windows < 1:
        raise DataError(f"words={words}, stride={stride}, max_windows={max_windows}: all must be >= 1")
    out = []
    for d, doc in enumerate(docs):
        w = doc.text.split()
        starts = list(range(0, max(len(w) - words, 0) + 1, stride))[:max_windows]
        out += [Window(d, i, " ".join(w[s : s + words])) for i, s in enumerate(starts)]
    return out
