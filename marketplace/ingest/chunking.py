"""Chunking documents along headings and paragraphs within a token budget.

Tokens are counted with the vault embedder's own WordPiece tokenizer (all-MiniLM-L6-v2's
`tokenizer.json`, loaded once per process with the `tokenizers` library: about a millisecond per page of
text), so a chunk of `MEMHUB_CHUNK_TOKENS` tokens is what the embedder actually sees. If the tokenizer
cannot be loaded, a documented approximation is used instead: 4/3 tokens per whitespace-separated word
(English prose averages 1.2-1.4 WordPiece tokens per word), rounded up.

A chunk never crosses a section (a heading starts a new one); inside a section paragraphs are packed
greedily up to the budget; a paragraph larger than the budget is split at sentence ends, and a sentence
larger than the budget at word boundaries (a single "word" larger than the budget every `budget` characters).
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

MIN_BUDGET = 16
MAX_BUDGET = 2048
SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class Section:
    """Text under one heading path (outermost heading first), optionally on one PDF page."""

    heading_path: tuple[str, ...]
    text: str
    page: int | None = None


@dataclass(frozen=True)
class Chunk:
    text: str
    tokens: int
    heading_path: tuple[str, ...] = field(default_factory=tuple)
    page: int | None = None


def default_budget() -> int:
    return int(getattr(settings, "MEMHUB_CHUNK_TOKENS", 256))


@functools.cache
def _tokenizer() -> Any:
    try:
        from tokenizers import Tokenizer

        from vault.embedding import model_dir

        tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
        tok.no_padding()
        tok.no_truncation()
        return tok
    except Exception:  # the approximation below is documented; ingestion must not depend on it
        logger.warning("embedder tokenizer unavailable; counting tokens by approximation", exc_info=True)
        return None


def approximate_tokens(text: str) -> int:
    return math.ceil(len(text.split()) * 4 / 3)


def count_tokens(text: str) -> int:
    """WordPiece tokens of `text` (without the [CLS]/[SEP] the embedder adds)."""
    if not text.strip():
        return 0
    tok = _tokenizer()
    if tok is None:
        return approximate_tokens(text)
    return len(tok.encode(text, add_special_tokens=False).ids)


def _split_words(text: str, budget: int) -> list[str]:
    pieces: list[str] = []
    current: list[str] = []
    used = 0
    for word in text.split():
        tokens = count_tokens(word)  # WordPiece splits on whitespace first: counts add up
        if tokens > budget:
            if current:
                pieces.append(" ".join(current))
                current, used = [], 0
            step = budget  # a WordPiece token covers at least one character
            pieces.extend(word[i : i + step] for i in range(0, len(word), step))
            continue
        if current and used + tokens > budget:
            pieces.append(" ".join(current))
            current, used = [], 0
        current.append(word)
        used += tokens
    if current:
        pieces.append(" ".join(current))
    return pieces


def _units(paragraph: str, budget: int) -> list[str]:
    """A paragraph as pieces that each fit the budget (itself, its sentences, or word runs)."""
    if count_tokens(paragraph) <= budget:
        return [paragraph]
    out: list[str] = []
    for sentence in SENTENCE_END.split(paragraph):
        if not sentence.strip():
            continue
        if count_tokens(sentence) <= budget:
            out.append(sentence)
        else:
            out.extend(_split_words(sentence, budget))
    return out


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs, inner whitespace runs kept as written (code stays code)."""
    return [p.strip() for p in PARAGRAPH_BREAK.split(text) if p.strip()]


def chunk_sections(sections: Iterable[Section], *, budget: int | None = None) -> list[Chunk]:
    budget = default_budget() if budget is None else budget
    if not MIN_BUDGET <= budget <= MAX_BUDGET:
        raise ValueError(f"token budget {budget} outside {MIN_BUDGET}..{MAX_BUDGET}")
    chunks: list[Chunk] = []
    for section in sections:
        pending: list[str] = []
        pending_tokens = 0

        def flush(section: Section = section) -> None:
            nonlocal pending, pending_tokens
            if pending:
                text = "\n\n".join(pending)
                chunks.append(Chunk(text, count_tokens(text), section.heading_path, section.page))
            pending, pending_tokens = [], 0

        for paragraph in paragraphs(section.text):
            for unit in _units(paragraph, budget):
                tokens = count_tokens(unit)
                # Joining adds no WordPiece tokens ("\n\n" is whitespace), so the sum is the count.
                if pending and pending_tokens + tokens > budget:
                    flush()
                pending.append(unit)
                pending_tokens += tokens
        flush()
    return chunks


def heading_label(path: Sequence[str]) -> str:
    return " > ".join(path)
