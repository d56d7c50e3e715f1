"""Fixtures for the Django-side inference tests: a real installed pack, memories, a configured model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from accounts import services as account_services
from governance.policy import Subject

HARBOUR = [
    {
        "title": "Ferry timetable",
        "text": "Ferries from Port Elin to Tarsk leave every forty minutes from pier 3.",
    },
    {"title": "Lighthouse", "text": "Mara Voss has kept the Port Elin lighthouse since 2019."},
    {"title": "Harbour hours", "text": "The harbour office opens at six and closes at nine."},
]


def publish_accepting_findings(actor: Subject, pack: Any, version: str) -> Any:
    """Publish as a publisher does after reading the PII report: the guide's people and places are
    invented, so the findings are accepted (with a reason) and publishing is tried again."""
    from core.errors import Conflict
    from governance.pii import pii_resolve
    from marketplace import services as market

    for _ in range(20):
        try:
            return market.release_publish(actor=actor, pack=pack, version=version)
        except Conflict as exc:
            if exc.code != "pii_unresolved":
                raise
            pii_resolve(
                actor=actor,
                report_id=exc.extra["report"],
                action="accept",
                finding_ids=[f["id"] for f in exc.extra["findings"]],
                reason="a fictional harbour guide: the names and places are invented",
            )
    raise AssertionError("publishing kept being refused")


@pytest.fixture
def installed_pack(alice, make_user, index_now):  # type: ignore[no-untyped-def]
    """A free pack published by another organisation and installed by alice (real marketplace flow)."""
    from marketplace import services as market

    publisher_user = make_user("harbourpress")
    org = account_services.organization_create(owner=publisher_user, slug="harbour-press")
    publisher = market.publisher_create(
        actor=Subject(user=publisher_user), organization=org, slug="harbour-press"
    )
    pack = market.pack_create(
        actor=Subject(user=publisher_user), publisher=publisher, slug="harbour", title="Harbour guide"
    )
    market.pack_add_memories(
        actor=Subject(user=publisher_user), pack=pack, items=[dict(item) for item in HARBOUR]
    )
    release = publish_accepting_findings(Subject(user=publisher_user), pack, "1.0.0")
    installation = market.pack_install(actor=Subject(user=alice), release=release)
    index_now()
    return installation


@pytest.fixture
def alice_notes(alice, index_now):  # type: ignore[no-untyped-def]
    from vault.services import memory_create_batch

    cubes = memory_create_batch(
        actor=Subject(user=alice),
        namespace_key="user:alice",
        items=[
            {"text": "Alice's dentist appointment is on Tuesday at 10.", "title": "Dentist"},
            {"text": "Alice prefers window seats on the Tarsk ferry.", "title": "Seat preference"},
        ],
    )
    index_now()
    return cubes


@pytest.fixture
def bob_secret(bob, index_now):  # type: ignore[no-untyped-def]
    from vault.services import memory_create_batch

    cubes = memory_create_batch(
        actor=Subject(user=bob),
        namespace_key="user:bob",
        items=[
            {"text": "Bob's secret: the Tarsk ferry pier 3 gate code is 4471.", "title": "Gate code"},
        ],
    )
    index_now()
    return cubes


@pytest.fixture(scope="session")
def generator_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen2 again, in its own directory: the API tests install adapters into the model they
    serve, and the runtime tests' model must not see them."""
    from inference.runtime.random_model import TINY_QWEN2, save_random_model

    return save_random_model(TINY_QWEN2, tmp_path_factory.mktemp("generator-qwen2"), seed=1)


@pytest.fixture
def generator(settings, generator_dir: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A configured generator: a tiny random Qwen2, loaded through from_pretrained by the worker."""
    settings.MEMHUB_MODEL_PATH = str(generator_dir)
    settings.MEMHUB_MODEL_NAME = "tiny-qwen2"
    settings.MEMHUB_INFERENCE_DIR = str(tmp_path / "inference")
    settings.MEMHUB_CHAT_DEFAULT_NEW_TOKENS = 8
    return generator_dir


def chat(client, content: str = "When do ferries leave for Tarsk?", **extra: Any):  # type: ignore[no-untyped-def]
    body = {"model": "memhub", "messages": [{"role": "user", "content": content}], **extra}
    return client.post("/v1/chat/completions", body, format="json")
