"""Small deterministic checks of a response's behaviour, for the consolidation benchmark.

Each check answers "does this response show the behaviour the context asked for?" (answer in
French, sign off with a phrase, shout, reply in JSON, use bullets, mention a private fact). They
are plain string heuristics: cheap, reproducible, and documented so a reader can judge a miss.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

# Frequent French function words, in two groups: those French shares with Spanish / Italian
# (`SHARED_MARKERS`) and those it does not (`FRENCH_MARKERS`). `OTHER_MARKERS` holds frequent
# English, Spanish and Italian words that French does not use. Elided forms keep their
# apostrophe ("l'", "qu'"), which English contractions never produce. Words French shares with
# English ("a", "on", "son", "plus", "car") are in no list.
FRENCH_MARKERS = frozenset(
    """
    le les des du une et est sont suis sommes êtes ont avons avez été être avoir fait faut peut
    je tu elle nous vous ils elles ce cet cette ces ça qui quoi dont où dans pour sur avec sans
    chez mais ou donc pas ne très aussi bien tout tous toute toutes au aux lui leur leurs mon mes
    tes sa ses notre nos votre vos voici voilà oui
    l' d' j' qu' n' c' s' m' t'
    """.split()
)
SHARED_MARKERS = frozenset("de la en que il un".split())
OTHER_MARKERS = frozenset(
    """
    the and is are was were of to in that it you for with this be have has not but what can
    your will i my we they he she at by from or if do there which would their been
    el los las es muy y con por para una del al lo pero está como más su sus mi
    è e di che per sono gli della molto anche questo nel alla hanno
    """.split()
)
_WORD = re.compile(r"[^\W\d_]+['’]?")


def _words(text: str) -> list[str]:
    return [w.replace("’", "'") for w in _WORD.findall(text.lower())]


def is_french(text: str, min_ratio: float = 0.15, min_words: int = 3) -> bool:
    """True when `text` reads as French, by a stopword-ratio heuristic.

    Words are runs of letters (accents included; an elided "l'" / "qu'" keeps its apostrophe).
    The text is French when it has at least `min_words` words, at least `min_ratio` of them are
    French function words (`FRENCH_MARKERS` or `SHARED_MARKERS`: articles, pronouns,
    auxiliaries, prepositions), and the distinctively French ones (`FRENCH_MARKERS`) outnumber
    `OTHER_MARKERS` (English, Spanish, Italian function words). Running French prose scores
    30–50% French markers; English prose near 0; Spanish and Italian prose hit only the shared
    "de", "la", "en", "il". Misses: replies under `min_words` words ("Bonjour !") and text
    mixing languages roughly evenly.
    """
    words = _words(text)
    if len(words) < min_words:
        return False
    fr = sum(w in FRENCH_MARKERS for w in words)
    shared = sum(w in SHARED_MARKERS for w in words)
    other = sum(w.rstrip("'") in OTHER_MARKERS for w in words)
    return fr + shared >= min_ratio * len(words) and fr > other


def _normalise(text: str) -> str:
    text = text.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')
    return " ".join(text.casefold().split())


def contains_phrase(text: str, phrase: str) -> bool:
    """`phrase` occurs in `text`, ignoring case, runs of whitespace and curly vs straight quotes."""
    if not phrase.strip():
        raise ValueError("contains_phrase needs a non-empty phrase")
    return _normalise(phrase) in _normalise(text)


def is_all_caps(text: str, min_ratio: float = 0.95) -> bool:
    """At least `min_ratio` of the cased letters are upper-case (False when there are none).

    The 5% slack forgives the odd "2nd" or "iPhone" in an otherwise shouted reply.
    """
    cased = [c for c in text if c.isupper() or c.islower()]
    return bool(cased) and sum(c.isupper() for c in cased) >= min_ratio * len(cased)


_FENCE = re.compile(r"^```[\w-]*\s*\n(.*?)\n?```$", re.DOTALL)


def is_json(text: str) -> bool:
    """The reply is one JSON object or array (optionally inside a single ``` / ```json fence).

    Scalars (`42`, `"hi"`) do not count: a context asking for JSON output wants structured data.
    """
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        return isinstance(json.loads(body), (dict, list))
    except ValueError:
        return False


_BULLET = re.compile(r"^(?:[-*•+]|\d+[.)])\s+\S")


def bullet_list(text: str, min_items: int = 2) -> bool:
    """The reply is (mostly) a list: at least `min_items` bullet lines, and they make up at least
    half of the non-empty lines. Bullets are `-`, `*`, `•`, `+` or `1.` / `1)` followed by text;
    an intro line and a closing line around the list are allowed.
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    items = sum(bool(_BULLET.match(ln)) for ln in lines)
    return items >= min_items and 2 * items >= len(lines)


def mentions_any(text: str, words: Iterable[str]) -> bool:
    """Some entry of `words` (a word or phrase) occurs in `text` as a whole word, ignoring case.

    "Topeka" matches "in Topeka." but "cat" does not match "category".
    """
    norm = _normalise(text)
    for word in words:
        if not word.strip():
            raise ValueError("mentions_any got an empty word")
        if re.search(rf"(?<!\w){re.escape(_normalise(word))}(?!\w)", norm):
            return True
    return False
