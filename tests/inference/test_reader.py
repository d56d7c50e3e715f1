"""MemReader: intent, time range and entities from the latest user turn."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from inference.prompting import Message
from inference.reader import memory_call_read

NOW = datetime(2025, 3, 15, 12, 30, tzinfo=UTC)


def read(text: str, *earlier: str):  # type: ignore[no-untyped-def]
    messages = [Message("user", e) for e in earlier] + [Message("user", text)]
    return memory_call_read(messages=messages, now=NOW)


@pytest.mark.parametrize(
    ("text", "label", "start", "end"),
    [
        ("What did we ship last year?", "last year", "2024-01-01", "2025-01-01"),
        ("What happened in May?", "in may", "2024-05-01", "2024-06-01"),  # May has not come yet this year
        ("What happened in March?", "in march", "2025-03-01", "2025-04-01"),
        ("Notes from May 2023 please", "from may 2023", "2023-05-01", "2023-06-01"),
        ("Which bugs did we fix in 2022?", "in 2022", "2022-01-01", "2023-01-01"),
        ("Anything new since 2024?", "since 2024", "2024-01-01", None),
        ("What did I say yesterday?", "yesterday", "2025-03-14", "2025-03-15"),
        ("Summarise last month", "last month", "2025-02-01", "2025-03-01"),
        ("What did Bob say 2 weeks ago?", "2 weeks ago", "2025-03-01", "2025-03-08"),
        ("Meetings in the last 10 days", "in the last 10 days", "2025-03-05", None),
        ("What was decided on 2024-11-05?", "on 2024-11-05", "2024-11-05", "2024-11-06"),
    ],
)
def test_time_expressions_become_filters(text, label, start, end):
    call = read(text)
    assert call.time_range is not None and call.time_range.label == label
    filters = call.filters()
    assert filters.get("created_after", "").startswith(start or "")
    if end:
        assert filters["created_before"].startswith(end)
    else:
        assert "created_before" not in filters


def test_no_time_expression_means_no_filter():
    assert read("How do ferries work?").filters() == {}


def test_entities_are_names_identifiers_and_quotes_not_sentence_openers():
    call = read('What did I tell Mara Voss about "Project Falcon" and INC-48213 in Tarsk?')
    assert call.entities == ["Project Falcon", "INC-48213", "Mara Voss", "Tarsk"]
    assert read("What is the harbour schedule?").entities == []


@pytest.mark.parametrize(
    ("text", "intent"),
    [
        ("Do you remember my seat preference?", "recall"),
        ("What did I order last time?", "recall"),
        ("Summarize the outage report", "summarize"),
        ("When does the ferry leave?", "question"),
        ("Write a haiku about the sea", "instruction"),
    ],
)
def test_intent(text, intent):
    assert read(text).intent == intent


def test_the_query_is_the_latest_user_turn():
    call = read("And the lighthouse?", "When do ferries leave?")
    assert call.query == "And the lighthouse?"
