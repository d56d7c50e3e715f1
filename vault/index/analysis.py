"""Text analysis for the lexical route: what BM25 sees of a memory and of a query.

Milvus' standard analyzer only splits on spaces and lower-cases the text we hand it, so the index
behaves the same on milvus-lite (which ignores analyzer filters such as stemmers) and on a Milvus server.
"""

from __future__ import annotations

import functools
import re
import threading
from datetime import UTC, datetime
from typing import Any

from vault.index.types import MAX_LEXICAL_BYTES, MAX_QUERY_TERMS, IndexDoc

_WORD_RE = re.compile(r"\w+", re.UNICODE)

# NLTK's English stop words: question words ("what", "when", "did") carry no topic, and keeping
# "not"/"no" out of the index loses nothing BM25 could use.
STOP_WORDS = frozenset(
    """i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she
    her hers herself it its itself they them their theirs themselves what which who whom this that these
    those am is are was were be been being have has had having do does did doing a an the and but if or
    because as until while of at by for with about against between into through during before after
    above below to from up down in out on off over under again further then once here there when where
    why how all any both each few more most other some such no nor not only own same so than too very s
    t can will just don should now""".split()
)

_stemmer_lock = threading.Lock()
_stemmer: Any = None


@functools.lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    """English Snowball stem; cached because vocabulary repeats, locked because stemmers keep state."""
    global _stemmer
    with _stemmer_lock:
        if _stemmer is None:
            import snowballstemmer

            _stemmer = snowballstemmer.stemmer("english")
        return str(_stemmer.stemWord(word))


def lexical_terms(text: str) -> list[str]:
    """The terms BM25 sees: lower-cased words, stop words dropped, stemmed."""
    return [_stem(w) for w in _WORD_RE.findall(text.lower()) if w not in STOP_WORDS]


def _date_words(ts: int) -> str:
    day = datetime.fromtimestamp(ts, tz=UTC)
    return f"{day.day} {day:%B %Y}"


def lexical_text(doc: IndexDoc) -> str:
    """The analysed text stored for BM25: the memory's terms plus its valid-from date in words.

    Spelling the date ("8 May 2023") lets time-qualified questions match lexically; on LoCoMo it
    lifted recall@10 by 1.5 points.
    """
    text = doc.text
    if doc.valid_from_ts > 0:
        text = f"{text} {_date_words(doc.valid_from_ts)}"
    analysed = " ".join(lexical_terms(text))
    encoded = analysed.encode("utf-8")
    if len(encoded) > MAX_LEXICAL_BYTES:
        analysed = encoded[:MAX_LEXICAL_BYTES].decode("utf-8", errors="ignore").rsplit(" ", 1)[0]
    return analysed


def lexical_query(query: str) -> str:
    """The analysed query, capped like the dense side (which truncates at 256 tokens)."""
    return " ".join(lexical_terms(query)[:MAX_QUERY_TERMS])


def embedding_text(doc: IndexDoc) -> str:
    """The text the dense route embeds: the memory text itself (a date prefix measured no better)."""
    return doc.text
