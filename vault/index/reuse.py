"""When a stored vector may stand for another text: installed copies of pack memories.

An installation's copy of a pack memory is the publisher's text with the per-installation watermark
applied (`governance.watermark`): keyed swaps between lexical variants that mean the same thing ("in
order to" / "to", "about" / "around", an optional comma) and zero-width characters, which the embedding
model's tokenizer drops (BERT's text cleaning removes Unicode format characters). The meaning is the
same by construction, so the publisher memory's vector, computed from the same release version, is a
sound vector for the copy, and re-embedding thousands of copies per install buys nothing.

Soundness rests on two checks, both cheap: the vector must have been computed for the exact version the
release shipped (the index row keeps the memory version), and the copy must differ from that text only a
little at the word level (`word_similarity` at least `min_similarity`), so a text that changed for any
other reason is embedded afresh. `bench/install_bench.py` measures the cosine between reused and freshly
computed vectors of watermarked copies (docs/marketplace/installs.md).
"""

from __future__ import annotations

import difflib
import functools
import re
import sys
import unicodedata

DEFAULT_MIN_SIMILARITY = 0.85
_WORD_RE = re.compile(r"\w+|[^\w\s]", re.UNICODE)


@functools.cache
def _format_chars() -> dict[int, None]:
    """A `str.translate` table deleting every Unicode format character (category Cf): built once (a
    fraction of a second), then stripping costs one C call per text instead of a Python call per char."""
    return {cp: None for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)) == "Cf"}


def _strip_format(text: str) -> str:
    if text.isascii():  # no ASCII character is a format character
        return text
    return text.translate(_format_chars())


def _words(text: str) -> list[str]:
    return _WORD_RE.findall(_strip_format(text).lower())


def word_similarity(original: str, copy: str) -> float:
    """Word-level similarity in [0, 1] of two texts, ignoring case and format characters (1.0: the same
    words, punctuation included)."""
    a, b = _words(original), _words(copy)
    if a == b:
        return 1.0
    if not a or not b:
        return 0.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def vector_reusable(*, original: str, copy: str, min_similarity: float = DEFAULT_MIN_SIMILARITY) -> bool:
    """May the vector of `original` stand for `copy`? (Their version check is the caller's.)"""
    return word_similarity(original, copy) >= min_similarity
