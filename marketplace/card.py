"""The pack card: what the platform measures about a release, never what the publisher types.

Computed at publish from the exact memory versions the release ships: memory and token counts,
languages, the date range of `valid_from`, the duplicate rate (exact, and near: equal once normalized),
a summary of the de-identification gate's report, and, when the publisher gave evaluation questions
with the memories that answer them, recall@10 through the vault's own search. The search needs the
index to hold the release's memories; until it does the evaluation is `pending` (a Celery task fills it
in once the outbox has indexed them).
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

CARD_VERSION = 1
RECALL_K = 10
TOKEN_METHOD = "estimate: 4 characters per token, rounded up"  # noqa: S105 (not a secret)
UNDETERMINED = "und"  # ISO 639-2 for "undetermined"

# A few hundred of the most frequent words decide a language well enough for a card; a text that does
# not clearly lean one way is `und` rather than a guess.
_STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset(
        "the and of to in is that it for on with as are was be this by at or from not have an they "
        "which you but has were their can all will there been one if when more would what so its".split()
    ),
    "de": frozenset(
        "der die und das ist nicht ein eine zu den mit von sich des auf für im dem es auch als wird "
        "sind bei oder werden aus nach wie einen noch kann über einem durch aber".split()
    ),
    "fr": frozenset(
        "le la les et des est un une du en que qui dans pour pas sur au par avec plus ce il sont ne "
        "se sa son aux ou mais nous vous leur été être cette".split()
    ),
    "es": frozenset(
        "el la los las y de que en un una es por con para no se del al lo como más pero sus su le "
        "ya o este sí porque esta son entre cuando muy sin sobre".split()
    ),
    "it": frozenset(
        "il di che e la per un una non in sono è del della con le si da gli al dei ma come anche più "
        "nel alla questo ha lo delle nella".split()
    ),
    "nl": frozenset(
        "de het een en van is dat op te in niet zijn voor met die aan er ook als bij om maar dan "
        "worden wordt naar door heeft nog deze".split()
    ),
    "pt": frozenset(
        "o a os as e de que em um uma é do da dos das para com não por no na se mais ao como mas "
        "foi ele ela são tem à seu sua".split()
    ),
}
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def token_estimate(text: str) -> int:
    """Tokens without a tokenizer in the web process (as the inference scheduler estimates them)."""
    return math.ceil(len(text) / 4) if text else 0


def language_detect(text: str) -> str:
    """The language whose common words the text uses most, or `und` when the lead is not clear (fewer
    than two such words, or the runner-up within a third of the winner)."""
    words = [w.casefold() for w in _WORD.findall(text)]
    if not words:
        return UNDETERMINED
    scores = sorted(
        ((sum(1 for w in words if w in stop), lang) for lang, stop in _STOPWORDS.items()), reverse=True
    )
    (best, lang), (second, _) = scores[0], scores[1]
    if best < 2 or second * 3 > best * 2:
        return UNDETERMINED
    return lang


def normalized_text_hash(text: str) -> str:
    """The hash two near-duplicates share: NFKC, case-folded, punctuation and symbols dropped,
    whitespace collapsed."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(ch if not unicodedata.category(ch).startswith(("P", "S")) else " " for ch in folded)
    return hashlib.sha256(" ".join(kept.split()).encode()).hexdigest()


def _iso(at: datetime | None) -> str | None:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z") if at else None


def card_compute(*, versions: Sequence[Any], pii: Mapping[str, Any], questions: int) -> dict[str, Any]:
    """The card of a release shipping `versions` (MemCubeVersion-like rows: kind, text, language,
    valid_from, content_sha256). `pii` is `pii_summary(...)` of the gate's view; `questions` is how many
    evaluation questions wait to be scored (0: no evaluation)."""
    total = len(versions)
    by_kind = Counter(str(v.kind) for v in versions)
    tokens = sum(token_estimate(v.text or "") for v in versions)
    languages: Counter[str] = Counter()
    detected = 0
    for v in versions:
        if not (v.text or "").strip():
            continue
        if v.language:
            languages[str(v.language).lower()] += 1
        else:
            languages[language_detect(v.text)] += 1
            detected += 1
    dated = [v.valid_from for v in versions if v.valid_from is not None]
    exact_seen: set[str] = set()
    near_seen: set[str] = set()
    exact = near = 0
    for v in versions:
        if v.content_sha256 in exact_seen:
            exact += 1
            continue
        exact_seen.add(v.content_sha256)
        if v.kind == "plaintext" and (v.text or "").strip():
            key = normalized_text_hash(v.text)
            if key in near_seen:
                near += 1
            near_seen.add(key)
    return {
        "card_version": CARD_VERSION,
        "memories": {"total": total, "by_kind": dict(sorted(by_kind.items()))},
        "tokens": {
            "total": tokens,
            "mean": round(tokens / total, 1) if total else 0.0,
            "method": TOKEN_METHOD,
        },
        "languages": dict(sorted(languages.items(), key=lambda kv: (-kv[1], kv[0]))),
        "languages_detected": detected,
        "valid_from": {
            "earliest": _iso(min(dated)) if dated else None,
            "latest": _iso(max(dated)) if dated else None,
            "dated": len(dated),
        },
        "duplicates": {
            "exact": exact,
            "near": near,
            "rate": round((exact + near) / total, 4) if total else 0.0,
        },
        "pii": dict(pii),
        "evaluation": (
            {"status": "pending", "questions": questions, "k": RECALL_K} if questions else {"status": "none"}
        ),
    }


def pii_summary(view: Any) -> dict[str, Any]:
    """What the card says about the de-identification gate's report (a `governance.pii.PiiReportView`):
    counts, never the findings' text."""
    statuses = Counter(f["status"] for f in view.findings)
    return {
        "report": str(view.report.id),
        "status": view.status,
        "memories_scanned": int(view.report.report.get("texts_scanned", 0)),
        "findings": len(view.findings),
        "by_type": dict(sorted(Counter(str(f["type"]) for f in view.findings).items())),
        "by_status": dict(sorted(statuses.items())),
        "blocking": view.blocking,
        "threshold": view.report.threshold,
    }


def recall_at_k(
    *, retrieved: Sequence[str], answers: Iterable[str], k: int = RECALL_K
) -> tuple[float, list[str]]:
    """(recall, the answers found): the share of `answers` among the first `k` of `retrieved`."""
    wanted = list(dict.fromkeys(answers))
    top = set(retrieved[:k])
    found = [a for a in wanted if a in top]
    return (len(found) / len(wanted) if wanted else 0.0), found
