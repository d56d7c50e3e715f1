"""Text normalisation shared by embedding and detection.

Detection must see the same words whatever a leaker did to the text's *encoding*: Unicode
compatibility forms (NFKC), invisible format characters, whitespace, accents and typographic quotes.
Both sides therefore reduce every word to `fold(word)` before hashing its context.
"""

from __future__ import annotations

import re
import unicodedata

# Typographic punctuation that ASCII transliteration (iconv //TRANSLIT, unidecode) maps to ASCII.
_PUNCT_FOLD = str.maketrans(
    {
        "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "\u02bc": "'",
        "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u2033": '"', "\u00ab": '"', "\u00bb": '"',
        "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-",
        "\u2212": "-",
        "\u2026": "...", "\u00a0": " ", "\u2007": " ", "\u202f": " ", "\u00b7": ".",
    }
)  # fmt: skip


def is_format_char(ch: str) -> bool:
    return unicodedata.category(ch) == "Cf"


def strip_format(text: str) -> str:
    return "".join(ch for ch in text if not is_format_char(ch))


def ascii_fold(text: str) -> str:
    """What an ASCII-only pipeline leaves: accents dropped, typographic punctuation mapped, the rest gone."""
    text = text.translate(_PUNCT_FOLD)
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(ch for ch in decomposed if ord(ch) < 128)


def fold(word: str) -> str:
    """The canonical form of one word for context hashing."""
    if word.isascii():
        return word.lower()  # already NFKC, folded and free of format characters
    return ascii_fold(unicodedata.normalize("NFKC", strip_format(word))).casefold()


def normalise_apostrophes(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u02bc", "'").replace("\u2018", "'")


WHITESPACE_RE = re.compile(r"\s+")
