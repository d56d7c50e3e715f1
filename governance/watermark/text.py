"""Plaintext watermark: keyed lexical variants, a zero-width layer, and detection with p-values.

Embedding
- Every occurrence of a variant pair (see `lexicon`) is a *slot*. The slot is named by its local
  context: the pair and up to `CONTEXT_WORDS` words either side within the sentence, each folded
  (NFKC, format characters removed, ASCII-folded, case-folded), with neighbouring slots replaced by
  their pair name so that the context does not depend on which variants were chosen. The
  installation's keyed bit for that name (see `keys`) picks the variant.
- Because the name depends only on nearby words, any excerpt still contains whole slots with their
  names: positions are self-synchronising, there is no global offset to lose, and reordering or
  dropping sentences leaves the other slots untouched.
- Zero-width layer (fragile, on by default): before roughly one word in `ZW_EVERY` (chosen by a keyed
  hash of its context) a ZERO WIDTH SPACE (bit 0) or WORD JOINER (bit 1) is inserted. It survives
  copy and paste, NFKC and whitespace changes, and dies under format-character stripping or ASCII
  folding. It adds many bits to short excerpts; robustness claims rest on the lexical layer alone.

Detection
- Read the slots and zero-width marks of the leaked text, compute every candidate's bits, count
  agreements. An innocent candidate's count is Binomial(n, 1/2) (`keys` explains why), so the
  p-value of the best count is an exact binomial tail; canary memories give a second, independent
  test. With m candidates and two tests the reported `adjusted_p_value` is Bonferroni-corrected
  (`2 * m * p`), so the chance that *any* innocent installation is accused is at most `alpha`.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from governance.watermark import canary as canary_mod
from governance.watermark.keys import (
    DOMAIN,
    _check_key,
    binomial_sf,
    bits_for,
    bonferroni,
    installation_vector,
    installation_vectors,
    keyed_u64,
)
from governance.watermark.lexicon import (
    INTENSIFIERS,
    LABEL_WORDS,
    NUMBER_WORDS,
    PAIRS,
    PARTICIPLES,
    SUBJECT_STARTERS,
    Guard,
    VariantPair,
)
from governance.watermark.normalize import fold, is_format_char, normalise_apostrophes

CONTEXT_WORDS = 2
ZW_EVERY = 10
ZW_CHARS = ("\u200b", "\u2060")  # ZERO WIDTH SPACE = 0, WORD JOINER = 1
DEFAULT_ALPHA = 1e-4
DEFAULT_CANARIES = 3
CANARY_HIT_P = 1e-6
BOUNDARY = "\x00"

_TOKEN_RE = re.compile(r"\w+")
_SENTENCE_GAP_RE = re.compile(r"[.!?\u2026]['\"\u2019\u201d)\]]*\s|\n")
_LB = r"(?<![\w'\u2019-])"
_RB = r"(?![\w'\u2019-])"


def _form_regex(form: str) -> str:
    out = []
    for ch in form:
        if ch == " ":
            out.append(r"\s+")
        elif ch == "'":
            out.append("['\u2019]")
        else:
            out.append(re.escape(ch))
    return "".join(out)


def _alternation(forms: Iterable[str]) -> str:
    return "|".join(_form_regex(f) for f in sorted(set(forms), key=len, reverse=True))


def _canon_form(matched: str) -> str:
    return " ".join(normalise_apostrophes(matched).lower().split())


class _Lexicon:
    """Compiled matchers for the variant pairs and the guards' look-aheads."""

    SPECIAL = (Guard.SENTENCE_START_BEFORE_SUBJECT, Guard.SERIAL_COMMA, Guard.CLAUSE_COMMA)

    def __init__(self, pairs: Sequence[VariantPair]) -> None:
        self.by_form: dict[str, tuple[VariantPair, int]] = {}
        multiword: list[str] = []
        for pair in pairs:
            if pair.guard in self.SPECIAL:
                continue
            for index, form in enumerate(pair.forms):
                self.by_form[form] = (pair, index)
                if " " in form:
                    multiword.append(form)
        starters = _alternation(SUBJECT_STARTERS)
        participles = _alternation(PARTICIPLES)
        numbers = _alternation([*NUMBER_WORDS, "one", "half", "a few", "a dozen", "a hundred", "a thousand"])
        after = {
            # Lookaheads accept every variant of the next word (digits for number words, hyphenated
            # compounds), or a slot would exist in one installation's copy and not in another's.
            Guard.FOLLOWED_BY_WORD: r"\s+(?!not\b)\w",
            Guard.FOLLOWED_BY_PARTICIPLE: rf"\s+(?!not\b)(?:(?:{participles})\b|[\w-]+ed\b)",
            Guard.CLAUSE_START: r"\s+\w",
            Guard.FOLLOWED_BY_NUMBER: rf"\s+(?:\d|(?:{numbers})\b)",
            Guard.COUNT: (
                r"\s+(?!(?:thirds|quarters|fifths|sixths|eighths|tenths|halves)\b)"  # fractions stay words
                r"[^\W\d_][\w'\u2019-]+s\b"
            ),
        }
        self.after = {g: re.compile(r, re.IGNORECASE) for g, r in after.items()}
        # One pass over word-like tokens (dictionary lookup) plus a small alternation for multi-word forms:
        # a thousand-way regex alternation is an order of magnitude slower.
        self.word_regex = re.compile(r"(?<![\w'\u2019-])[\w'\u2019-]+(?<![-'\u2019])")
        self.multi_regex = re.compile(f"{_LB}(?:{_alternation(multiword)}){_RB}", re.IGNORECASE)
        self.special = {p.guard: p for p in pairs if p.guard in (Guard.SERIAL_COMMA, Guard.CLAUSE_COMMA)}
        comma = [p for p in pairs if p.guard is Guard.SENTENCE_START_BEFORE_SUBJECT]
        self.comma_pairs = {p.forms[0]: p for p in comma}
        self.comma_regex = re.compile(
            rf"{_LB}({_alternation(p.forms[0] for p in comma)})(,?)(?=\s+(?:{starters})\b)", re.IGNORECASE
        )
        # "A, B and C" / "A, B, and C": a short list item between a comma and the conjunction (its length
        # is checked in canonical words, see `find_slots`).
        self.serial_regex = re.compile(
            r",\s+(\w[\w'\u2019-]*(?:[ \t]+[\w'\u2019-]+){0,7}?)(,?)([ \t]+)(and|or)(?=\s+[\w'\u2019])"
        )
        # Two clauses joined by and/but with a new pronoun subject: the comma is the writer's choice.
        self.clause_regex = re.compile(
            r"(?<=[\w)'\u2019\"])(,?)([ \t]+)(and|but)(?=\s+(?:he|she|they|we)\b)", re.IGNORECASE
        )


_LEX = _Lexicon(PAIRS)


@dataclass(frozen=True, slots=True)
class Slot:
    start: int
    end: int
    pair: VariantPair
    form: int  # 0 or 1: which of the pair's forms the text has
    key: str = ""  # the slot's name: pair + folded context


def _starts_sentence(text: str, start: int) -> bool:
    before = text[:start].rstrip(" \t\"'\u201c\u2018(")
    return not before or before[-1] in ".!?\n\u2026" or text[:start].endswith("\n")


def _starts_clause(text: str, start: int) -> bool:
    before = text[:start].rstrip(" \t\"'\u201c\u2018(")
    return not before or before[-1] in ".!?\n\u2026,;:\u2014\u2013-"


_PREV_WORD_RE = re.compile(r"([\w'\u2019]+)[^\w]*$")


def _previous_word(text: str, start: int) -> str:
    m = _PREV_WORD_RE.search(text, max(0, start - 40), start)
    word = normalise_apostrophes(m.group(1).lower()) if m else ""
    return "not" if word.endswith("n't") else word  # "don't nearly" reads like "do not nearly"


def _guard_ok(pair: VariantPair, text: str, start: int) -> bool:
    if pair.guard is Guard.CLAUSE_START:
        return _starts_clause(text, start)
    if pair.guard is Guard.COUNT:
        # a count, not a label or an amount of money, and not the first word of a sentence
        if start and text[start - 1] in "$\u20ac\u00a3#.,:/":
            return False
        return not _starts_sentence(text, start) and _previous_word(text, start) not in LABEL_WORDS
    if pair.guard is Guard.NOT_AFTER_INTENSIFIER:
        return _previous_word(text, start) not in INTENSIFIERS
    return True


def find_slots(text: str) -> list[Slot]:
    """Every carrier position in `text` (no names yet), without overlaps, in order."""
    found: list[Slot] = []
    candidates = [m for m in _LEX.word_regex.finditer(text) if _canon_form(m.group(0)) in _LEX.by_form]
    candidates += list(_LEX.multi_regex.finditer(text))
    for m in candidates:
        pair, index = _LEX.by_form[_canon_form(m.group(0))]
        check = _LEX.after.get(pair.guard)
        if check is not None and not check.match(text, m.end()):
            continue
        if _guard_ok(pair, text, m.start()):
            found.append(Slot(m.start(), m.end(), pair, index))
    for m in _LEX.comma_regex.finditer(text):
        if _starts_sentence(text, m.start()):
            pair = _LEX.comma_pairs[_canon_form(m.group(1))]
            found.append(Slot(m.start(), m.end(), pair, 1 if m.group(2) else 0))
    for m in _LEX.clause_regex.finditer(text):
        found.append(Slot(m.start(1), m.end(3), _LEX.special[Guard.CLAUSE_COMMA], 1 if m.group(1) else 0))
    found.sort(key=lambda s: s.start)
    starts = [s.start for s in found]
    for m in _LEX.serial_regex.finditer(text):
        # Count the item's words with every other slot as one word: "I'm" and "I am" must count alike,
        # or the serial slot would exist in one variant of the text and not in the other.
        lo, hi = m.start(1), m.end(1)
        first = max(0, bisect.bisect_left(starts, lo) - 1)
        inside = [s for s in found[first : bisect.bisect_left(starts, hi)] if s.start < hi and s.end > lo]
        words = sum(
            1
            for t in _TOKEN_RE.finditer(text, lo, hi)
            if not any(s.start <= t.start() < s.end for s in inside)
        )
        if 1 <= words + len(inside) <= 4:
            found.append(Slot(m.start(2), m.end(4), _LEX.special[Guard.SERIAL_COMMA], 1 if m.group(2) else 0))
    found.sort(key=lambda s: (s.start, -(s.end - s.start)))
    out: list[Slot] = []
    for s in found:
        if not out or s.start >= out[-1].end:
            out.append(s)
    return out


@dataclass(slots=True)
class _Analysis:
    slots: list[Slot]
    slot_hashes: np.ndarray
    zw_starts: list[int]  # char offsets of words that carry a zero-width mark
    zw_hashes: np.ndarray
    items: list[str] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    slot_of: list[int | None] = field(default_factory=list)


def _items(text: str, slots: list[Slot]) -> tuple[list[str], list[int], list[int | None]]:
    """The canonical word sequence: folded words, slots as `§pair`, sentence boundaries as BOUNDARY.

    Returns (items, item char starts, for each item the slot index or None)."""
    items: list[str] = []
    starts: list[int] = []
    slot_of: list[int | None] = []
    tokens = [(m.start(), m.end(), m.group(0)) for m in _TOKEN_RE.finditer(text)]
    ti = si = 0
    prev_end = 0
    while ti < len(tokens) or si < len(slots):
        if si < len(slots) and (ti >= len(tokens) or slots[si].start <= tokens[ti][0]):
            s = slots[si]
            el_start, el_end, canon, which = s.start, s.end, "\u00a7" + s.pair.id, si
            si += 1
            while ti < len(tokens) and tokens[ti][0] < el_end:
                ti += 1
        else:
            el_start, el_end, word = tokens[ti]
            canon, which = fold(word), None
            ti += 1
            if not canon:
                continue
        if items and _SENTENCE_GAP_RE.search(text, prev_end, el_start):
            items.append(BOUNDARY)
            starts.append(prev_end)
            slot_of.append(None)
        items.append(canon)
        starts.append(el_start)
        slot_of.append(which)
        prev_end = el_end
    return items, starts, slot_of


@functools.lru_cache(maxsize=64)
def _hmac_states(key: bytes, label: bytes) -> tuple[Any, Any]:
    """HMAC-SHA256 (RFC 2104) under `key`, split at the message: the inner hash already fed the padded
    key and the `keyed_u64` prefix, the outer one the padded key. Copying them per message is half the
    cost of `hmac.new`/`hmac.digest`, which set the key up again on every call."""
    k = hashlib.sha256(key).digest() if len(key) > 64 else key
    k = k.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in k) + DOMAIN + b"/" + label + b"/")
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in k))
    # Once per key and label: the split states must give exactly what `keyed_u64` gives.
    i = inner.copy()
    i.update(b"check")
    o = outer.copy()
    o.update(i.digest())
    if int.from_bytes(o.digest()[:8], "little") != keyed_u64(key, label, b"check"):
        raise AssertionError("split HMAC state disagrees with keyed_u64")
    return inner, outer


def _keyed_u64s(key: bytes, label: bytes, messages: Iterable[str]) -> list[int]:
    """`keys.keyed_u64(key, label, m)` for each message, bit for bit (the same HMAC-SHA256 of the same
    bytes): a 10,000-memory install makes some 200,000 of these calls."""
    inner, outer = _hmac_states(bytes(key), label)
    out: list[int] = []
    for m in messages:
        i = inner.copy()
        i.update(m.encode())
        o = outer.copy()
        o.update(i.digest())
        out.append(int.from_bytes(o.digest()[:8], "little"))
    return out


def _keyed_vectors(key: bytes, label: bytes, messages: Iterable[str]) -> np.ndarray:
    """`keys.slot_vectors`, through `_keyed_u64s`."""
    return np.array(_keyed_u64s(key, label, messages), dtype=np.uint64)


def _window(items: list[str], j: int, step: int, width: int) -> list[str]:
    out: list[str] = []
    k = j + step
    while 0 <= k < len(items) and len(out) < width and items[k] != BOUNDARY:
        out.append(items[k])
        k += step
    return out


def _slot_key(items: list[str], j: int) -> str:
    left = _window(items, j, -1, CONTEXT_WORDS)
    right = _window(items, j, 1, CONTEXT_WORDS)
    return f"{items[j]}\x1f{' '.join(reversed(left))}\x1f{' '.join(right)}"


def _zw_context(items: list[str], j: int) -> str:
    # `_window(items, j, -1, 1)` and `_window(items, j, 1, 1)`, inlined: this runs once per word.
    left = items[j - 1] if j > 0 and items[j - 1] != BOUNDARY else "^"
    right = items[j + 1] if j + 1 < len(items) and items[j + 1] != BOUNDARY else "$"
    return f"{left}\x1f{items[j]}\x1f{right}"


# Installing one pack for many buyers analyses the same memories again and again; the analysis does not
# depend on the installation, only the bits do.
# Sized for a large pack (10,000 memories): an LRU smaller than the pack evicts every entry before its
# next use when installs walk the pack in order, and then caches nothing.
@functools.lru_cache(maxsize=16_384)
def _analyze(text: str, key: bytes) -> _Analysis:
    slots = find_slots(text)
    items, starts, slot_of = _items(text, slots)
    named: list[Slot] = list(slots)
    word_at: list[int] = []
    contexts: list[str] = []
    for j, which in enumerate(slot_of):
        if which is not None:
            s = named[which]
            named[which] = Slot(s.start, s.end, s.pair, s.form, _slot_key(items, j))
            continue
        if items[j] == BOUNDARY:
            continue
        word_at.append(starts[j])
        contexts.append(_zw_context(items, j))
    # Which words carry a zero-width mark: all the selection hashes at once (same values, fewer calls).
    selected = [i for i, h in enumerate(_keyed_u64s(key, b"zw-select", contexts)) if h % ZW_EVERY == 0]
    zw_starts = [word_at[i] for i in selected]
    zw_keys = [contexts[i] for i in selected]
    return _Analysis(
        slots=named,
        slot_hashes=_keyed_vectors(key, b"slot", (s.key for s in named)),
        zw_starts=zw_starts,
        zw_hashes=_keyed_vectors(key, b"zw", zw_keys),
        items=items,
        starts=starts,
        slot_of=slot_of,
    )


def _match_case(template: str, replacement: str) -> str:
    letters = [c for c in template if c.isalpha()]
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return replacement.upper()
    if letters and letters[0].isupper():
        return replacement[0].upper() + replacement[1:]
    return replacement


def _render(text: str, slot: Slot, form: int, apostrophe: str) -> str:
    original = text[slot.start : slot.end]
    if slot.pair.guard is Guard.SENTENCE_START_BEFORE_SUBJECT:
        word = original.rstrip(",")
        return word + ("," if form == 1 else "")
    if slot.pair.guard in (Guard.SERIAL_COMMA, Guard.CLAUSE_COMMA):
        body = original.lstrip(",")
        return ("," if form == 1 else "") + body
    out = _match_case(original, slot.pair.forms[form])
    return out.replace("'", apostrophe)


def watermark_text(text: str, *, key: bytes, installation_id: str, zero_width: bool = True) -> str:
    """The installation's copy of `text`: variants chosen by its keyed bits, plus the zero-width layer."""
    _check_key(key)
    if not text:
        return text
    analysis = _analyze(text, key)
    inst = np.array([installation_vector(key, installation_id)], dtype=np.uint64)
    slot_bits = bits_for(analysis.slot_hashes, inst)[:, 0]
    apostrophe = "\u2019" if text.count("\u2019") > text.count("'") else "'"
    edits: list[tuple[int, int, str]] = [
        (s.start, s.end, _render(text, s, int(bit), apostrophe))
        for s, bit in zip(analysis.slots, slot_bits, strict=True)
    ]
    if zero_width and analysis.zw_starts:
        zw_bits = bits_for(analysis.zw_hashes, inst)[:, 0]
        edits += [
            (pos, pos, ZW_CHARS[int(bit)])
            for pos, bit in zip(analysis.zw_starts, zw_bits, strict=True)
            if pos > 0 and text[pos - 1].isspace()
        ]
    edits.sort(key=lambda e: (e[0], e[1]))
    out: list[str] = []
    cursor = 0
    for start, end, replacement in edits:
        out.append(text[cursor:start])
        out.append(replacement)
        cursor = end
    out.append(text[cursor:])
    return "".join(out)


def watermark_texts(
    texts: Sequence[str], *, key: bytes, installation_id: str, zero_width: bool = True
) -> list[str]:
    return [watermark_text(t, key=key, installation_id=installation_id, zero_width=zero_width) for t in texts]


# --- detection ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Observation:
    """What a (possibly attacked) text carries: named slots with the forms seen, zero-width bits, canaries."""

    lexical_keys: tuple[str, ...]
    lexical_forms: np.ndarray
    lexical_hashes: np.ndarray
    zw_hashes: np.ndarray
    zw_bits: np.ndarray
    canary_shapes: tuple[tuple[int, tuple[str, ...]], ...]


def observe(text: str, *, key: bytes) -> Observation:
    _check_key(key)
    # Zero-width marks are read first, then every format character is removed for the lexical pass.
    kept: list[str] = []
    marks: list[tuple[int, int]] = []
    for ch in text:
        if ch in ZW_CHARS:
            marks.append((len(kept), ZW_CHARS.index(ch)))
        elif not is_format_char(ch):
            kept.append(ch)
    clean = "".join(kept)
    analysis = _analyze(clean, key)
    # one observation per slot name; a name seen with both forms cannot come from one installation
    forms: dict[str, int] = {}
    hashes: dict[str, int] = {}
    conflicted: set[str] = set()
    for s, h in zip(analysis.slots, analysis.slot_hashes.tolist(), strict=True):
        if s.key in forms and forms[s.key] != s.form:
            conflicted.add(s.key)
        forms.setdefault(s.key, s.form)
        hashes.setdefault(s.key, h)
    keys = tuple(k for k in forms if k not in conflicted)

    zw: dict[int, int] = {}
    zw_conflict: set[int] = set()
    if marks:
        items = analysis.items
        index = {
            st: j
            for j, st in enumerate(analysis.starts)
            if analysis.slot_of[j] is None and items[j] != BOUNDARY
        }
        for pos, bit in marks:
            j = index.get(pos)
            if j is None:
                continue
            ctx = _zw_context(items, j)
            if keyed_u64(key, b"zw-select", ctx.encode()) % ZW_EVERY != 0:
                continue  # not a position our embedder would mark: someone else's character
            h = keyed_u64(key, b"zw", ctx.encode())
            if h in zw and zw[h] != bit:
                zw_conflict.add(h)
            zw.setdefault(h, bit)
    zw_items = [(h, b) for h, b in zw.items() if h not in zw_conflict]
    return Observation(
        lexical_keys=keys,
        lexical_forms=np.array([forms[k] for k in keys], dtype=np.uint8),
        lexical_hashes=np.array([hashes[k] for k in keys], dtype=np.uint64),
        zw_hashes=np.array([h for h, _ in zw_items], dtype=np.uint64),
        zw_bits=np.array([b for _, b in zw_items], dtype=np.uint8),
        canary_shapes=tuple(canary_mod.find_canary_shapes(clean)),
    )


@dataclass(frozen=True, slots=True)
class CandidateScore:
    installation_id: str
    matches: int
    slots: int
    p_value: float
    canary_hit: bool

    @property
    def score(self) -> float:
        return self.matches / self.slots if self.slots else 0.0


@dataclass(frozen=True, slots=True)
class TextAttribution:
    """Detection result. `installation_id` is set only when the evidence clears `alpha`."""

    installation_id: str | None
    best_candidate: str | None
    score: float  # fraction of slots agreeing with the best candidate
    matches: int
    slots: int
    p_value: float  # the best candidate's own p-value (both tests, before the candidate correction)
    adjusted_p_value: float  # probability that an innocent installation scores as well, corrected
    alpha: float
    candidates: int
    layers: dict[str, Any]
    ranking: tuple[CandidateScore, ...]

    @property
    def accused(self) -> bool:
        return self.installation_id is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "installation_id": self.installation_id,
            "best_candidate": self.best_candidate,
            "score": round(self.score, 4),
            "matches": self.matches,
            "slots": self.slots,
            "p_value": self.p_value,
            "adjusted_p_value": self.adjusted_p_value,
            "alpha": self.alpha,
            "candidates": self.candidates,
            "layers": self.layers,
            "ranking": [
                {
                    "installation_id": c.installation_id,
                    "matches": c.matches,
                    "slots": c.slots,
                    "p_value": c.p_value,
                    "canary_hit": c.canary_hit,
                }
                for c in self.ranking
            ],
        }


def detect_text(
    text: str,
    *,
    key: bytes,
    candidates: Sequence[str],
    alpha: float = DEFAULT_ALPHA,
    canaries: int = DEFAULT_CANARIES,
    use_zero_width: bool = True,
    observation: Observation | None = None,
) -> TextAttribution:
    """Attribute leaked `text` to one of `candidates` (installation ids), or to nobody.

    `canaries` must match the count issued per installation (0 disables the canary test).
    """
    obs = observation if observation is not None else observe(text, key=key)
    cand = list(dict.fromkeys(candidates))
    m = len(cand)
    vectors = installation_vectors(key, cand)
    lex_agree = (bits_for(obs.lexical_hashes, vectors) == obs.lexical_forms[:, None]).sum(axis=0)
    n_lex = len(obs.lexical_keys)
    if use_zero_width and obs.zw_hashes.size:
        zw_agree = (bits_for(obs.zw_hashes, vectors) == obs.zw_bits[:, None]).sum(axis=0)
        n_zw = int(obs.zw_hashes.size)
    else:
        zw_agree, n_zw = np.zeros(m, dtype=np.int64), 0
    agree = lex_agree.astype(np.int64) + zw_agree
    n = n_lex + n_zw

    shapes = sorted(set(obs.canary_shapes))
    canary_ps = np.ones(m, dtype=np.float64)
    if canaries and shapes:
        for i, c in enumerate(cand):
            canary_ps[i] = canary_mod.canary_p_value(key, c, canaries, shapes)[0]
    # A "hit" is a canary that alone would clear a strict bar; the p-value used is the test's own.
    hits = canary_ps <= CANARY_HIT_P
    tests = 2 if canaries else 1

    # Rank by the smaller of the two p-values; the binomial tail is monotone in agreements.
    order = sorted(range(m), key=lambda i: (float(canary_ps[i]), -int(agree[i])))
    ranking: list[CandidateScore] = []
    for i in order[:5]:
        p_bin = binomial_sf(int(agree[i]), n) if n else 1.0
        p = min(p_bin, float(canary_ps[i]))
        ranking.append(CandidateScore(cand[i], int(agree[i]), n, min(1.0, p * tests), bool(hits[i])))
    ranking.sort(key=lambda c: (c.p_value, -c.matches))
    best = ranking[0] if ranking else None
    adjusted = bonferroni(best.p_value, m) if best else 1.0
    accused = best.installation_id if best and adjusted <= alpha else None
    layers: dict[str, dict[str, Any]] = {
        "lexical": {"slots": n_lex},
        "zero_width": {"slots": n_zw},
        "canary": {
            "shapes_found": len(obs.canary_shapes),
            "hits": int(hits.sum()),
            "p_value": float(canary_ps.min()) if m else 1.0,
        },
    }
    if best is not None:
        bi = cand.index(best.installation_id)
        layers["lexical"]["matches"] = int(lex_agree[bi])
        layers["zero_width"]["matches"] = int(zw_agree[bi])
    return TextAttribution(
        installation_id=accused,
        best_candidate=best.installation_id if best else None,
        score=best.score if best else 0.0,
        matches=best.matches if best else 0,
        slots=n,
        p_value=best.p_value if best else 1.0,
        adjusted_p_value=adjusted,
        alpha=alpha,
        candidates=m,
        layers=layers,
        ranking=tuple(ranking),
    )


def capacity(text: str, *, key: bytes) -> dict[str, int]:
    """How many carriers a text offers (for the publish UI and the bench)."""
    a = _analyze(text, key)
    return {"lexical_slots": len({s.key for s in a.slots}), "zero_width_slots": len(a.zw_starts)}
