"""Transformations a leaker (or an innocent pipeline) applies to text; used by tests and the bench.

They model edits that keep the text useful: re-encoding, invisible-character scrubbing, whitespace
normalisation, transliteration to ASCII, quoting an excerpt, reordering or dropping sentences.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Callable

from governance.watermark.normalize import ascii_fold, strip_format

_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+|\n+")


def nfkc(text: str, rng: random.Random | None = None) -> str:
    return unicodedata.normalize("NFKC", text)


def remove_format_chars(text: str, rng: random.Random | None = None) -> str:
    return strip_format(text)


def collapse_whitespace(text: str, rng: random.Random | None = None) -> str:
    return re.sub(r"\s+", " ", text).strip()


def fold_to_ascii(text: str, rng: random.Random | None = None) -> str:
    return ascii_fold(text)


def excerpt(text: str, rng: random.Random, fraction: float = 0.3) -> str:
    """A contiguous `fraction` of the characters, cut at word boundaries, from a random place."""
    length = int(len(text) * fraction)
    start = rng.randint(0, max(0, len(text) - length))
    end = start + length
    while start > 0 and not text[start - 1].isspace():
        start += 1
    while end < len(text) and not text[end].isspace():
        end += 1
    return text[start:end]


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_SPLIT_RE.split(text) if s.strip()]


def shuffle_sentences(text: str, rng: random.Random) -> str:
    parts = sentences(text)
    rng.shuffle(parts)
    return " ".join(parts)


def drop_sentences(text: str, rng: random.Random, keep: float = 0.5) -> str:
    parts = sentences(text)
    kept = [s for s in parts if rng.random() < keep] or parts[:1]
    return " ".join(kept)


def everything(text: str, rng: random.Random) -> str:
    """All encoding attacks, then shuffle, then a 30% excerpt: what a careful leaker might do."""
    text = collapse_whitespace(fold_to_ascii(nfkc(remove_format_chars(text))))
    return excerpt(shuffle_sentences(text, rng), rng, 0.3)


ATTACKS: dict[str, Callable[[str, random.Random], str]] = {
    "none": lambda t, r: t,
    "nfkc": nfkc,
    "remove_format_chars": remove_format_chars,
    "whitespace_collapse": collapse_whitespace,
    "ascii_fold": fold_to_ascii,
    "excerpt30": lambda t, r: excerpt(t, r, 0.3),
    "shuffle_sentences": shuffle_sentences,
    "drop_half_sentences": drop_sentences,
    "all_combined": everything,
}
