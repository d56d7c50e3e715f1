"""Canary memories: a few keyed, false notes per installation, written in the pack's own words.

Each installation receives `count` extra memories. A canary is one of a few advice-shaped frames
("In practice the {1} matters more than the {2}: ...") whose six slots are filled with nouns taken
from the pack itself (words that follow an article or a determiner in its memories), so a canary in a
Python pack talks about functions and lists, one in a travel pack about borders and museums: nothing
marks it out as foreign to the pack, and it answers no real question (the recombination is false).

Which nouns fill the slots is keyed. For installation `i`, canary `c` and slot `s`, every candidate
word `w` gets a keyed 64-bit hash `h(i, c, s, w)`; the slot takes the word whose hash has the most
trailing zero bits. A canary found in leaked text is checked without the pack: the detector reads the
six slot words and adds up their trailing zeros under each candidate's hashes. The issuer's canary
scores about log2(vocabulary) per slot (some 40 to 60 bits in all); for an installation that did not
receive it, the six counts are independent geometric variables (P(z >= k) = 2^-k), so the chance of
scoring `S` or more is a negative-binomial tail. With a union bound over the `count` canaries and the
`F` canary-shaped sentences in the text (and the 1/T chance that the keyed frame matches), that tail
is the canary layer's p-value: honest for any pack, and stronger the richer the pack's vocabulary.

Packs with too few nouns (a two-line test pack) fall back to a built-in list of everyday nouns.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from governance.watermark.keys import DOMAIN, _check_key
from governance.watermark.lexicon import PAIRS
from governance.watermark.normalize import WHITESPACE_RE, fold

SLOTS = 6
MIN_VOCABULARY = 24  # below this a pack's own nouns give too little evidence; the fallback joins in
MAX_VOCABULARY = 4000

FRAMES = (
    "Here the {0} matters more than the {1}: check the {2} against the {3} before you change "
    "the {4} or the {5}.",
    "A common mistake is to treat the {0} like the {1}; the {2} only lines up with the {3} when the "
    "{4} follows the {5}.",
    "Keep the {0} apart from the {1}, and look at the {2} again whenever the {3} or the {4} affects the {5}.",
    "The {0} usually decides the {1}, so note the {2} first, then the {3}; leave the {4} and the {5} "
    "for last.",
    "Experience shows that the {0} fails without the {1}; pair the {2} with the {3} and the {4} with "
    "the {5}.",
    "Before relying on the {0}, compare the {1} with the {2} and make sure that the {3} matches the {4} "
    "in the {5}.",
)

# Nouns for packs too small to supply their own.
FALLBACK_NOUNS = tuple(
    """
    kettle lantern toolbox ladder thermos flashlight padlock umbrella doorstop teapot clipboard compass
    binoculars wheelbarrow skillet boathouse allotment workshop greenhouse bakery cabin garage attic
    orchard cellar marina library notebook calendar schedule checklist drawer cupboard basket locker
    folder envelope receipt invoice ticket timetable platform corridor staircase basement balcony
    backpack blanket bucket cable candle carpet chair charger cushion desk doorbell drill fence
    fountain gate glove hammer handle heater helmet hinge hook jacket keyboard kitchen lamp lawn
    letterbox mailbox mattress mirror monitor napkin needle oven pantry pillow pipe planter pliers
    porch printer radiator railing rake ribbon roof rope ruler saucepan scissors screwdriver shelf
    shovel sink sofa spade sponge stapler stool stove suitcase switch table tablecloth tape tent
    thermostat towel tray trolley tripod trowel vase wallet wardrobe whistle window wrench yard
    bridge canal ferry harbour station tunnel market square garden meadow river stream pond valley
    hill cliff beach pier jetty lighthouse warehouse depot factory office studio gallery museum
    theatre cinema chapel tower castle cottage farmhouse barn stable hostel clinic pharmacy bank
    pantry cabinet closet hallway landing terrace courtyard driveway carport shed workbench
    """.split()
)

_DETERMINERS = r"the|a|an|this|that|these|those|each|every|your|our|their|its|his|her|some|any|no"
_NP_END = (
    r"of|in|on|at|for|with|to|is|are|was|were|and|or|from|by|that|which|when|has|have|can|will|should|"
    r"must|may|into|than|as|but|so|if"
)
# The head of a short noun phrase: "the (thickest) part of", "a (fixed) schedule."
_NOUN_RE = re.compile(
    rf"\b(?:{_DETERMINERS})\s+(?:[a-z-]+\s+)?([a-z][a-z-]{{3,20}})(?=\s*(?:[.,;:!?)]|$)|\s+(?:{_NP_END})\b)",
    re.IGNORECASE,
)
_CONTENT_RE = re.compile(r"(?<![\w'-])([a-z][a-z]{4,20})(?![\w'-])")
# Too common to mean anything in a note; used only when a pack has too few nouns of its own.
_PLAIN_WORDS = frozenset(
    "about above after again against along among another around because been before being below "
    "between both could does doing down during each either enough every first from further have "
    "having here into itself just least less more most much must never next often only other others "
    "over same should since some such than that their them then there these they thing things this "
    "those through under until upon very were what when where which while whose will with within "
    "without would your yours usually always really still".split()
)
_SLOT_RE = re.compile(r"\{(\d)\}")


def _carrier_words() -> frozenset[str]:
    """Words that are forms of the lexical watermark's variant pairs: a canary holding one would have
    wording that depends on the lexical layer."""
    words: set[str] = set()
    for pair in PAIRS:
        for form in pair.forms:
            words.update(w.strip(",").lower() for w in form.split())
    return frozenset(w for w in words if w)


_CARRIERS = _carrier_words()
_FRAME_WORDS = frozenset(w.lower() for f in FRAMES for w in re.findall(r"[A-Za-z]+", _SLOT_RE.sub(" ", f)))


def pack_vocabulary(texts: Iterable[str]) -> tuple[str, ...]:
    """The pack's nouns, as canaries use them: lower-case ASCII words of 4 to 21 letters that follow an
    article or determiner, never a watermark carrier or a frame word; sorted. Too few are topped up
    with the fallback nouns."""
    texts = list(texts)
    found: set[str] = set()
    for text in texts:
        for m in _NOUN_RE.finditer(text):
            word = m.group(1)
            if word.islower() and word.isascii() and not word.endswith("-"):
                found.add(word)
    found -= _CARRIERS | _FRAME_WORDS
    if len(found) < MIN_VOCABULARY:  # a small pack: its other content words too
        for text in texts:
            found.update(m.group(1) for m in _CONTENT_RE.finditer(text))
        found -= _CARRIERS | _FRAME_WORDS | _PLAIN_WORDS
    words = sorted(found)[:MAX_VOCABULARY]
    if len(words) < MIN_VOCABULARY // 2:
        words = sorted(set(words) | (set(FALLBACK_NOUNS) - _CARRIERS))
    return tuple(words)


DEFAULT_VOCABULARY = pack_vocabulary(())


@dataclass(frozen=True, slots=True)
class Canary:
    template: int
    fields: tuple[str, ...]
    text: str
    bits: int  # the sum of the slot words' trailing zero bits under this installation's hashes


def _subkey(key: bytes, installation_id: str, index: int) -> bytes:
    return hmac.new(
        key, DOMAIN + b"/canary-v2/" + installation_id.encode() + b"/" + str(index).encode(), hashlib.sha256
    ).digest()


def _frame(subkey: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(b"frame", key=subkey, digest_size=8).digest(), "little") % len(
        FRAMES
    )


def _word_hash(subkey: bytes, slot: int, word: str) -> int:
    digest = hashlib.blake2b(f"{slot}/{word}".encode(), key=subkey, digest_size=8).digest()
    return int.from_bytes(digest, "little")


def trailing_zeros(value: int) -> int:
    return 64 if value == 0 else (value & -value).bit_length() - 1


def _make(key: bytes, installation_id: str, index: int, vocabulary: Sequence[str]) -> Canary:
    subkey = _subkey(key, installation_id, index)
    frame = _frame(subkey)
    chosen: list[str] = []
    bits = 0
    for slot in range(SLOTS):
        best = max(
            (w for w in vocabulary if w not in chosen),
            key=lambda w: (trailing_zeros(_word_hash(subkey, slot, w)), _word_hash(subkey, slot, w)),
        )
        chosen.append(best)
        bits += trailing_zeros(_word_hash(subkey, slot, best))
    return Canary(frame, tuple(chosen), FRAMES[frame].format(*chosen), bits)


@functools.lru_cache(maxsize=65536)
def canaries_for(
    key: bytes, installation_id: str, count: int, vocabulary: tuple[str, ...] = DEFAULT_VOCABULARY
) -> tuple[Canary, ...]:
    _check_key(key)
    out: list[Canary] = []
    index = 0
    while len(out) < count:  # distinct within an installation
        c = _make(key, installation_id, index, vocabulary)
        index += 1
        if all(c.text != o.text for o in out):
            out.append(c)
    return tuple(out)


def canary_memories(
    *, key: bytes, installation_id: str, count: int = 3, vocabulary: Sequence[str] | None = None
) -> list[str]:
    """The texts to add to the installation (order them like any other memory). `vocabulary` is
    `pack_vocabulary(pack_texts)`; without it the fallback nouns are used."""
    vocab = tuple(vocabulary) if vocabulary is not None else DEFAULT_VOCABULARY
    if len(vocab) < SLOTS:
        raise ValueError(f"a canary vocabulary needs at least {SLOTS} words")
    return [c.text for c in canaries_for(key, installation_id, count, vocab)]


# --- detection ------------------------------------------------------------------------------------------


def _frame_regex(frame: str) -> re.Pattern[str]:
    parts = []
    pos = 0
    for m in _SLOT_RE.finditer(frame):
        parts.append(re.escape(fold(frame[pos : m.start()])).replace(r"\ ", r"\s+"))
        parts.append(rf"(?P<s{m.group(1)}>[a-z][a-z-]*)")
        pos = m.end()
    # the closing full stop is optional: an excerpt or a list may drop it
    parts.append(re.escape(fold(frame[pos:]).rstrip(".")).replace(r"\ ", r"\s+"))
    return re.compile("".join(parts))


_FRAME_RES = tuple(_frame_regex(f) for f in FRAMES)


def find_canary_shapes(text: str) -> list[tuple[int, tuple[str, ...]]]:
    """Every canary-shaped sentence in `text`, as (frame, slot words), after normalisation."""
    normal = WHITESPACE_RE.sub(" ", " ".join(fold(w) for w in text.split(" ")))
    found = []
    for t, regex in enumerate(_FRAME_RES):
        for m in regex.finditer(normal):
            found.append((t, tuple(m.group(f"s{s}") for s in range(SLOTS))))
    return found


def null_tail(bits: int, slots: int = SLOTS) -> float:
    """P(the slots' trailing-zero counts sum to `bits` or more) for an installation that did not issue
    the canary: a sum of `slots` independent Geometric(1/2) counts, a negative binomial."""
    if bits <= 0:
        return 1.0
    below = sum(math.comb(s + slots - 1, s) * 2.0 ** -(s + slots) for s in range(bits))
    exact_tail = sum(math.comb(s + slots - 1, s) * 2.0 ** -(s + slots) for s in range(bits, bits + 400))
    return max(0.0, min(1.0, exact_tail if below > 0.999 else 1.0 - below))


def canary_p_value(
    key: bytes, installation_id: str, count: int, shapes: Sequence[tuple[int, tuple[str, ...]]]
) -> tuple[float, int]:
    """(p-value, best score) of the canary test for one installation: the probability that an
    installation which issued none of these canaries scores as well on the shapes found, union-bounded
    over its `count` canaries and the shapes."""
    if not count or not shapes:
        return 1.0, 0
    best = 0
    for index in range(count):
        subkey = _subkey(key, installation_id, index)
        frame = _frame(subkey)
        for t, words in shapes:
            if t != frame:
                continue
            score = sum(trailing_zeros(_word_hash(subkey, s, w)) for s, w in enumerate(words))
            best = max(best, score)
    if best == 0:
        return 1.0, 0
    return min(1.0, count * len(shapes) * null_tail(best) / len(FRAMES)), best
