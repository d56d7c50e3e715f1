"""Redaction and pack-consistent pseudonymisation.

Pseudonyms are type-shaped placeholders (`<EMAIL_1>`, `<PHONE_2>`), not realistic fakes:
- nobody can mistake `<EMAIL_1>` for a real address, whereas a fake address may belong to a real
  person or reach a real mailbox;
- a model reading the memory still sees what kind of thing stood there and that two mentions are
  the same thing, which is what retrieval and question answering need;
- fakes would have to be kept consistent with checksums (Luhn, IBAN) to survive our own re-scan.

Consistency across a pack: the `Pseudonymizer` numbers values per type in order of first sight. Its
state maps a keyed digest of each normalised value to its number, never the value itself, so the state
can be stored with the pack and reused by the next release (the same address stays `<EMAIL_1>`) without
keeping the personal data it replaced. Without the pack key the digests cannot be tested against
guesses.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
from collections.abc import Sequence
from typing import Any

from governance.deid.engine import DEFAULT_MIN_SCORE, scan
from governance.deid.types import EntityType, Finding, Mode

_STATE_VERSION = 1


def normalise_value(entity_type: str, value: str) -> str:
    """One spelling per identity: `4111 1111-...` and `41111111...` are the same card."""
    if entity_type == EntityType.EMAIL:
        return value.strip().casefold()
    if entity_type in (EntityType.PHONE, EntityType.CREDIT_CARD, EntityType.US_SSN):
        digits = re.sub(r"\D", "", value)
        # NANP numbers written with and without the leading country code are the same line.
        if entity_type == EntityType.PHONE and len(digits) == 11 and digits.startswith("1"):
            digits = digits[1:]
        return digits
    if entity_type in (EntityType.IBAN, EntityType.UK_NINO):
        return re.sub(r"\s", "", value).upper()
    if entity_type == EntityType.IP_ADDRESS:
        return value.strip().lower()
    return value.strip()


class Pseudonymizer:
    """Pack-scoped pseudonym assignment. One instance (or its saved state) per pack; thread-safe."""

    def __init__(self, key: bytes, state: dict[str, Any] | None = None) -> None:
        if len(key) < 16:
            raise ValueError("pseudonymizer key must be at least 16 bytes")
        self._key = key
        self._lock = threading.Lock()
        self._assigned: dict[str, str] = {}
        self._counters: dict[str, int] = {}
        if state:
            if state.get("version") != _STATE_VERSION:
                raise ValueError(f"unsupported pseudonymizer state version {state.get('version')!r}")
            self._assigned = dict(state["assigned"])
            self._counters = {k: int(n) for k, n in state["counters"].items()}

    def _digest(self, entity_type: str, value: str) -> str:
        message = f"{entity_type}\x00{normalise_value(entity_type, value)}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:32]

    def pseudonym(self, entity_type: str, value: str) -> str:
        digest = self._digest(entity_type, value)
        with self._lock:
            label = self._assigned.get(digest)
            if label is None:
                n = self._counters.get(entity_type, 0) + 1
                self._counters[entity_type] = n
                label = f"{entity_type}_{n}"
                self._assigned[digest] = label
        return f"<{label}>"

    def state(self) -> dict[str, Any]:
        """JSON-serialisable; holds digests and counters only."""
        with self._lock:
            return {
                "version": _STATE_VERSION,
                "assigned": dict(self._assigned),
                "counters": dict(self._counters),
            }


def replace_findings(text: str, findings: Sequence[Finding], replacement: Any) -> str:
    """Replace each (non-overlapping) finding by `replacement(finding, original_value)`."""
    out: list[str] = []
    cursor = 0
    for f in sorted(findings, key=lambda f: f.start):
        if f.start < cursor:
            continue  # overlapping findings were resolved upstream; never rewrite a span twice
        out.append(text[cursor : f.start])
        out.append(replacement(f, text[f.start : f.end]))
        cursor = f.end
    out.append(text[cursor:])
    return "".join(out)


def apply(
    text: str,
    mode: Mode | str,
    *,
    pseudonymizer: Pseudonymizer | None = None,
    min_score: float = DEFAULT_MIN_SCORE,
    allow: Sequence[str] = (),
    findings: Sequence[Finding] | None = None,
) -> tuple[str, list[Finding]]:
    """Scan `text` (or use the given findings) and return `(new_text, findings)`.

    Offsets in the returned findings refer to the *input* text.
    """
    mode = Mode(mode)
    found = list(findings) if findings is not None else scan(text, min_score=min_score, allow=allow)
    if mode is Mode.REPORT:
        return text, found
    if mode is Mode.REDACT:
        return replace_findings(text, found, lambda f, _value: f"<{f.type}>"), found
    if pseudonymizer is None:
        raise ValueError("pseudonymize mode needs the pack's Pseudonymizer")
    return replace_findings(text, found, lambda f, value: pseudonymizer.pseudonym(f.type, value)), found


def apply_many(
    texts: Sequence[str],
    mode: Mode | str,
    *,
    pseudonymizer: Pseudonymizer | None = None,
    min_score: float = DEFAULT_MIN_SCORE,
    allow: Sequence[str] = (),
) -> tuple[list[str], list[list[Finding]]]:
    """`apply` over a pack's texts in order, sharing one pseudonymizer so pseudonyms agree."""
    out_texts: list[str] = []
    out_findings: list[list[Finding]] = []
    for text in texts:
        new, found = apply(text, mode, pseudonymizer=pseudonymizer, min_score=min_score, allow=allow)
        out_texts.append(new)
        out_findings.append(found)
    return out_texts, out_findings
