"""The PII report a publisher sees before publishing, and the gate the publish path applies.

A report never contains the values it found, only where they are and a masked preview (`jo…om`),
because reports are stored and shown in the UI: keeping the report must not keep the personal data.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from governance.deid.engine import DEFAULT_MIN_SCORE, scan
from governance.deid.types import Finding

DEFAULT_BLOCKING_THRESHOLD = 0.5
REPORT_VERSION = 1


def mask(value: str) -> str:
    """Enough to recognise the value one already knows, not enough to learn it."""
    value = " ".join(value.split())
    if len(value) <= 6:
        return "*" * len(value)
    keep = min(4, max(1, len(value) // 8))
    return f"{value[:keep]}…{value[-keep:]}" if len(value) > 24 else f"{value[:keep]}…"


@dataclass(frozen=True, slots=True)
class ReportFinding:
    text_index: int
    start: int
    end: int
    type: str
    score: float
    recognizer: str
    preview: str

    @property
    def id(self) -> str:
        """Stable within one report: what the publisher ticks to resolve a false positive."""
        return f"{self.text_index}:{self.start}:{self.end}:{self.type}"


@dataclass(slots=True)
class PiiReport:
    texts_scanned: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    max_score: dict[str, float] = field(default_factory=dict)
    findings: list[ReportFinding] = field(default_factory=list)
    min_score: float = DEFAULT_MIN_SCORE

    @property
    def total(self) -> int:
        return len(self.findings)

    def add(self, text_index: int, text: str, finding: Finding) -> None:
        self.findings.append(
            ReportFinding(
                text_index=text_index,
                start=finding.start,
                end=finding.end,
                type=finding.type,
                score=finding.score,
                recognizer=finding.recognizer,
                preview=mask(text[finding.start : finding.end]),
            )
        )
        self.counts[finding.type] = self.counts.get(finding.type, 0) + 1
        self.max_score[finding.type] = max(self.max_score.get(finding.type, 0.0), finding.score)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": REPORT_VERSION,
            "texts_scanned": self.texts_scanned,
            "min_score": self.min_score,
            "total": self.total,
            "counts": dict(sorted(self.counts.items())),
            "max_score": dict(sorted(self.max_score.items())),
            "findings": [asdict(f) | {"id": f.id} for f in self.findings],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PiiReport:
        if data.get("version") != REPORT_VERSION:
            raise ValueError(f"unsupported PII report version {data.get('version')!r}")
        fields = ("text_index", "start", "end", "type", "score", "recognizer", "preview")
        return cls(
            texts_scanned=int(data["texts_scanned"]),
            counts={k: int(n) for k, n in data["counts"].items()},
            max_score={k: float(s) for k, s in data["max_score"].items()},
            findings=[ReportFinding(**{k: f[k] for k in fields}) for f in data["findings"]],
            min_score=float(data.get("min_score", DEFAULT_MIN_SCORE)),
        )


def report(
    texts: Iterable[str], *, min_score: float = DEFAULT_MIN_SCORE, allow: Sequence[str] = ()
) -> PiiReport:
    """Scan every text of a pack (or upload) and summarise."""
    rep = PiiReport(min_score=min_score)
    for index, text in enumerate(texts):
        rep.texts_scanned += 1
        for finding in scan(text, min_score=min_score, allow=allow):
            rep.add(index, text, finding)
    return rep


def blocking_findings(
    rep: PiiReport, threshold: float = DEFAULT_BLOCKING_THRESHOLD, *, resolved: Collection[str] = ()
) -> list[ReportFinding]:
    """Findings at or above `threshold` that the publisher has not resolved (by `ReportFinding.id`).

    Publishing is refused while this is non-empty. Redacting or pseudonymising and re-scanning
    resolves findings by removing them; `resolved` records a human's "this is not personal data".
    """
    return [f for f in rep.findings if f.score >= threshold and f.id not in resolved]
