"""Value types shared by the de-identification modules (plain Python, no Django)."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass
from typing import Any


class EntityType(enum.StrEnum):
    """The types the built-in recognizers emit. NER plug-ins may emit other names (PERSON, LOCATION...)."""

    EMAIL = "EMAIL"
    PHONE = "PHONE"
    CREDIT_CARD = "CREDIT_CARD"
    IBAN = "IBAN"
    IP_ADDRESS = "IP_ADDRESS"
    US_SSN = "US_SSN"
    UK_NINO = "UK_NINO"
    URL_CREDENTIALS = "URL_CREDENTIALS"
    API_KEY = "API_KEY"
    JWT = "JWT"
    PRIVATE_KEY = "PRIVATE_KEY"


BUILTIN_TYPES: tuple[str, ...] = tuple(t.value for t in EntityType)


class Mode(enum.StrEnum):
    REPORT = "report"  # leave the text alone, say what is there
    REDACT = "redact"  # replace each finding with <TYPE>
    PSEUDONYMIZE = "pseudonymize"  # replace with a pack-consistent <TYPE_n>


@dataclass(frozen=True, slots=True)
class Finding:
    """One suspected identifier or secret in one text. Offsets are Python string indices."""

    start: int
    end: int
    type: str
    score: float
    recognizer: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        return cls(
            start=int(data["start"]),
            end=int(data["end"]),
            type=str(data["type"]),
            score=float(data["score"]),
            recognizer=str(data["recognizer"]),
        )
