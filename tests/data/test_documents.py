"""Documents for the document memory: JSONL loading with line-numbered errors, windows as upstream."""

import pytest

from sycojax.data.documents import Document, document_windows, load_documents_jsonl, wikipedia_documents
from sycojax.data.sources import DataError, EmptyDatasetError


def test_jsonl_round_trip_and_errors(tmp_path):
    p = tmp_path / "docs.jsonl"
    p.write_text('{"id": "a", "text": "one two"}\n\n{"id": 7, "text": " three "}\n')
    assert load_documents_jsonl(p) == [Document("a", "one two"), Document("7", "three")]
    for body, match in [
        ('{"id": "a", "text": "x"}\n{"id": "a"', r"docs\.jsonl:2: not a JSON object"),
        ('{"text": "x"}\n', r':1: a record needs an "id"'),
        ('{"id": "a", "text": "  "}\n', r':1: a record needs an "id" and a non-empty "text"'),
        ('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', r":2: duplicate id 'a'"),
    ]:
        p.write_text(body)
        with pytest.raises(DataError, match=match):
            load_documents_jsonl(p)
    p.write_text("\n\n")
    with pytest.raises(EmptyDatasetError, match="holds no documents"):
        load_documents_jsonl(p)
    with pytest.raises(DataError, match="does not exist"):
        load_documents_jsonl(tmp_path / "nope.jsonl")


def test_windows_stride_and_cap():
    docs = [Document("long", " ".join(f"w{i}" for i in range(300))), Document("short", "a b c")]
    win = document_windows(docs, words=128, stride=64, max_windows=10)
    long_w = [w for w in win if w.doc == 0]
    assert [w.text.split()[0] for w in long_w] == ["w0", "w64", "w128"]  # 300 words: the last start is <= 300 - 128
    assert all(len(w.text.split()) == 128 for w in long_w)
    assert [w.text for w in win if w.doc == 1] == ["a b c"]
    assert len(document_windows(docs, words=10, stride=5, max_windows=4)) == 4 + 1


def test_wikipedia_documents_from_the_fixture():
    import os  # noqa: PLC0415

    root = os.path.join(os.path.dirname(__file__), "..", "fixtures", "data")
    docs = wikipedia_documents(2, min_words=5, root=root)
    assert len(docs) == 2 and all(d.text and d.id for d in docs)
    with pytest.raises(EmptyDatasetError, match="ask for fewer"):
        wikipedia_documents(10_000, root=root)
