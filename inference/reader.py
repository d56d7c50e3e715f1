"""MemReader: turns a chat request into a memory call (query, intent, time range, entities).

Rule-based and deterministic (a `now` is passed in), so what the scheduler retrieves for a request can be
explained and tested. The time range becomes the vault's `created_after`/`created_before` filters;
entities re-rank retrieval towards memories that mention them.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from inference.prompting import Message

MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_name) if name}
MONTHS.update({name.lower(): i for i, name in enumerate(calendar.month_abbr) if name})
DAYS = {name.lower() for name in calendar.day_name}
_MONTH_RE = "|".join(sorted(MONTHS, key=len, reverse=True))
_UNIT_DAYS = {"day": 1, "week": 7, "month": 30, "year": 365}

# Capitalised words that start questions or are pronouns: not entities.
_NOT_ENTITIES = {
    "i",
    "i'm",
    "i've",
    "i'd",
    "what",
    "when",
    "where",
    "who",
    "whom",
    "whose",
    "which",
    "why",
    "how",
    "did",
    "do",
    "does",
    "is",
    "are",
    "was",
    "were",
    "can",
    "could",
    "would",
    "should",
    "will",
    "shall",
    "may",
    "might",
    "have",
    "has",
    "had",
    "the",
    "a",
    "an",
    "my",
    "me",
    "we",
    "our",
    "you",
    "your",
    "he",
    "she",
    "they",
    "it",
    "this",
    "that",
    "these",
    "those",
    "please",
    "tell",
    "show",
    "give",
    "list",
    "find",
    "summarize",
    "summarise",
    "remind",
    "explain",
    "describe",
    "and",
    "or",
    "but",
    "if",
    "then",
    "so",
    "hi",
    "hello",
    "thanks",
    "thank",
    "ok",
    "okay",
    "yes",
    "no",
    "last",
    "next",
    "in",
    "on",
    "at",
    "since",
    "before",
    "after",
    "during",
    "today",
    "yesterday",
    "tomorrow",
    "let",
    "let's",
    "also",
    "assistant",
    "user",
    "system",
}


@dataclass(frozen=True)
class TimeRange:
    start: datetime | None
    end: datetime | None
    label: str

    def as_dict(self) -> dict[str, str | None]:
        return {
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
            "label": self.label,
        }


@dataclass
class MemoryCall:
    query: str
    intent: str  # recall | question | summarize | instruction
    time_range: TimeRange | None = None
    entities: list[str] = field(default_factory=list)

    def filters(self) -> dict[str, str]:
        """The vault filter dict this call asks for."""
        out: dict[str, str] = {}
        if self.time_range and self.time_range.start:
            out["created_after"] = self.time_range.start.isoformat()
        if self.time_range and self.time_range.end:
            out["created_before"] = self.time_range.end.isoformat()
        return out

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["time_range"] = self.time_range.as_dict() if self.time_range else None
        data["filters"] = self.filters()
        return data


def _month_start(year: int, month: int) -> datetime:
    return datetime(year, month, 1, tzinfo=UTC)


def _next_month(year: int, month: int) -> datetime:
    return _month_start(year + (month == 12), month % 12 + 1)


def _day_start(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def parse_time_range(text: str, now: datetime) -> TimeRange | None:
    t = text.lower()
    today = _day_start(now)
    if m := re.search(rf"\bbetween ({_MONTH_RE}) and ({_MONTH_RE})(?: (\d{{4}}))?\b", t):
        year = int(m.group(3)) if m.group(3) else now.year
        a, b = MONTHS[m.group(1)], MONTHS[m.group(2)]
        if not m.group(3) and b > now.month:
            year -= 1
        start_year = year - 1 if a > b else year
        return TimeRange(_month_start(start_year, a), _next_month(year, b), m.group(0))
    if m := re.search(rf"\b(?:in|during|on|from) (?:early |late |mid )?({_MONTH_RE})\.?(?: (\d{{4}}))?\b", t):
        month = MONTHS[m.group(1)]
        if m.group(2):
            year = int(m.group(2))
        else:  # the most recent such month: "in May" asked in March means last May
            year = now.year if month <= now.month else now.year - 1
        return TimeRange(_month_start(year, month), _next_month(year, month), m.group(0))
    if m := re.search(r"\b(?:in|during) (19\d\d|20\d\d)\b", t):
        year = int(m.group(1))
        return TimeRange(datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC), m.group(0))
    if m := re.search(r"\bsince (19\d\d|20\d\d)\b", t):
        return TimeRange(datetime(int(m.group(1)), 1, 1, tzinfo=UTC), None, m.group(0))
    if m := re.search(rf"\bsince ({_MONTH_RE})\b", t):
        month = MONTHS[m.group(1)]
        year = now.year if month <= now.month else now.year - 1
        return TimeRange(_month_start(year, month), None, m.group(0))
    if m := re.search(r"\bbefore (19\d\d|20\d\d)\b", t):
        return TimeRange(None, datetime(int(m.group(1)), 1, 1, tzinfo=UTC), m.group(0))
    if m := re.search(r"\b(?:on )?(\d{4})-(\d{2})-(\d{2})\b", t):
        try:
            day = datetime(int(m.group(1)), int(m.group(2)), int(m.group(3)), tzinfo=UTC)
        except ValueError:
            day = None
        if day:
            return TimeRange(day, day + timedelta(days=1), m.group(0))
    if m := re.search(r"\b(?:in the )?(?:last|past) (\d{1,3}) (day|week|month|year)s?\b", t):
        days = int(m.group(1)) * _UNIT_DAYS[m.group(2)]
        return TimeRange(today - timedelta(days=days), None, m.group(0))
    if m := re.search(r"\b(\d{1,3}|a|an|one|two|three) (day|week|month|year)s? ago\b", t):
        n = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}.get(m.group(1)) or int(m.group(1))
        span = _UNIT_DAYS[m.group(2)]
        start = today - timedelta(days=n * span)
        return TimeRange(start, start + timedelta(days=span), m.group(0))
    if m := re.search(r"\b(last|this|previous|past) (week|month|year)\b", t):
        which, unit = m.group(1), m.group(2)
        if unit == "year":
            year = now.year if which == "this" else now.year - 1
            return TimeRange(
                datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC), m.group(0)
            )
        if unit == "month":
            if which == "this":
                return TimeRange(
                    _month_start(now.year, now.month), _next_month(now.year, now.month), m.group(0)
                )
            year, month = (now.year - 1, 12) if now.month == 1 else (now.year, now.month - 1)
            return TimeRange(_month_start(year, month), _next_month(year, month), m.group(0))
        week_start = today - timedelta(days=today.weekday())
        if which == "this":
            return TimeRange(week_start, week_start + timedelta(days=7), m.group(0))
        return TimeRange(week_start - timedelta(days=7), week_start, m.group(0))
    if re.search(r"\byesterday\b", t):
        return TimeRange(today - timedelta(days=1), today, "yesterday")
    if re.search(r"\btoday\b", t):
        return TimeRange(today, today + timedelta(days=1), "today")
    return None


def extract_entities(text: str) -> list[str]:
    """Quoted phrases, identifiers (INC-48213, @handles, #tags) and runs of capitalised words."""
    found: list[str] = []

    def add(value: str) -> None:
        value = value.strip(" .,;:!?'\"")
        if (
            value
            and value.lower() not in _NOT_ENTITIES
            and value.lower() not in MONTHS
            and value.lower() not in DAYS
            and value not in found
        ):
            found.append(value)

    for m in re.finditer(r"[\"“]([^\"”]{2,80})[\"”]", text):
        add(m.group(1))
    for m in re.finditer(r"(?<![\w@#])([@#][\w.-]{2,64}|[A-Za-z]+-\d+[\w-]*|\d+-[A-Za-z][\w-]*)", text):
        add(m.group(1))
    for sentence in re.split(r"(?<=[.!?])\s+|\n+", text):
        words = re.findall(r"[\w'\u2019-]+", sentence)
        run: list[str] = []
        for index, word in enumerate([*words, ""]):
            capitalised = bool(word) and word[0].isupper() and word.lower() not in _NOT_ENTITIES
            # A capitalised first word is only an entity if it is not an ordinary sentence opener.
            if capitalised and (index > 0 or word.lower() not in _NOT_ENTITIES):
                run.append(word)
                continue
            if run:
                add(" ".join(run))
                run = []
    return found[:20]


def classify_intent(text: str) -> str:
    t = text.strip().lower()
    if re.match(r"^(summari[sz]e|give me a summary|summary of|overview of|recap)\b", t):
        return "summarize"
    if re.search(
        r"\b(remember|recall|remind me|did i|have i|what did (i|we)|when did (i|we)|last time|"
        r"do you know (my|what i))\b",
        t,
    ):
        return "recall"
    if t.endswith("?") or re.match(
        r"^(what|when|where|who|whom|whose|which|why|how|is|are|was|were|do|does|"
        r"did|can|could|should|would|will)\b",
        t,
    ):
        return "question"
    return "instruction"


def memory_call_read(*, messages: Sequence[Message], now: datetime | None = None) -> MemoryCall:
    """Read the latest user turn (earlier turns are context the model sees, not the retrieval query)."""
    moment = now or datetime.now(UTC)
    user_turns = [m.content for m in messages if m.role == "user" and m.content.strip()]
    query = user_turns[-1].strip() if user_turns else ""
    return MemoryCall(
        query=query,
        intent=classify_intent(query),
        time_range=parse_time_range(query, moment),
        entities=extract_entities(query),
    )
