"""The outbox processes rows independently: a poison row backs off and is dead-lettered, every other
row, of every tenant, keeps indexing; an operator lists dead letters and retries them after a fix."""

import datetime as dt
import json

import pytest
from django.core.management import call_command
from django.utils import timezone

from governance.policy import Subject
from vault import services
from vault.index import get_index
from vault.models import IndexOutbox, MemCube
from vault.selectors import memory_search

pytestmark = pytest.mark.django_db

# What the API now refuses, as it might sit in the database from before (or from a direct write).
POISON = {
    "tab in a tag": {"tags": ["a\tb"]},
    "newline in a tag": {"tags": ["line\nbreak"]},
    "control character in semantic_type": {"semantic_type": "fact\x1b"},
    "valid_from before 1970": {"valid_from": dt.datetime(1960, 1, 1, tzinfo=dt.UTC)},
    "valid_to before 1970": {"valid_to": dt.datetime(1969, 12, 31, tzinfo=dt.UTC)},
}


def poison_rows(user, index_now) -> list[MemCube]:
    """One memory per poison value, written to the database directly, each with a pending outbox row."""
    subject = Subject(user=user)
    cubes = services.memory_create_batch(
        actor=subject,
        namespace_key=f"user:{user.username}",
        items=[{"text": f"poison {name}"} for name in POISON],
    )
    index_now()  # indexed while still clean
    for cube, values in zip(cubes, POISON.values(), strict=True):
        MemCube.objects.filter(pk=cube.pk).update(**values)
    services.index_enqueue([c.id for c in cubes], "upsert")
    return cubes


def due_now() -> None:
    IndexOutbox.objects.filter(processed_at__isnull=True).update(next_attempt_at=timezone.now())


def test_poison_rows_do_not_stop_other_tenants_from_being_indexed(alice, bob, make_user, index_now):
    poisoned = poison_rows(alice, index_now)
    carol = make_user("carol")
    later = []
    for user in (bob, carol):
        later += services.memory_create_batch(
            actor=Subject(user=user),
            namespace_key=f"user:{user.username}",
            items=[{"text": f"{user.username} keeps bees on the roof"}, {"text": "the tram leaves at nine"}],
        )
    alice_fine = services.memory_create(
        actor=Subject(user=alice), namespace_key="user:alice", data={"text": "alice grows tomatoes"}
    )

    assert index_now() == len(later) + 1  # every clean row applied in one pass, the poison ones not
    for user in (bob, carol):
        hits = memory_search(actor=Subject(user=user), query="bees on the roof", top_k=1).results
        assert hits and hits[0].memory.owner_id == user.id
    assert memory_search(actor=Subject(user=alice), query="tomatoes", top_k=1).results[0].memory == alice_fine

    for cube in poisoned:
        row = IndexOutbox.objects.get(cube_id=cube.id, processed_at__isnull=True)
        assert row.attempts == 1 and row.last_error and row.dead_lettered_at is None
        assert row.next_attempt_at > timezone.now()
    assert not IndexOutbox.objects.filter(processed_at__isnull=True).exclude(
        cube_id__in=[c.id for c in poisoned]
    )


def test_failing_rows_back_off_exponentially_then_dead_letter(alice, settings, index_now, capsys):
    settings.VAULT_OUTBOX_MAX_ATTEMPTS = 3
    settings.VAULT_OUTBOX_BACKOFF_S = 100.0
    (cube, *_) = poison_rows(alice, index_now)
    row = lambda: IndexOutbox.objects.get(cube_id=cube.id, processed_at__isnull=True)  # noqa: E731

    delays = []
    for attempt in (1, 2):
        before = timezone.now()
        index_now()
        assert row().attempts == attempt
        delays.append((row().next_attempt_at - before).total_seconds())
        assert index_now() == 0  # not due yet: a second run leaves it alone
        due_now()
    assert 80 <= delays[0] <= 120 and 160 <= delays[1] <= 240  # base, 2 x base (+-20% jitter)

    index_now()
    dead = row()
    assert dead.attempts == 3 and dead.dead_lettered_at is not None and dead.next_attempt_at is None
    index_now()
    assert row().attempts == 3  # dead letters are not retried on their own

    call_command("vault_status")
    report = json.loads(capsys.readouterr().out)
    assert report["dead_letters"] == len(POISON)
    assert report["pending"] == 0
    assert {s["cube_id"] for s in report["dead_letter_samples"]} >= {str(cube.id)}
    assert "tag" in report["dead_letter_samples"][0]["error"] or report["dead_letter_samples"][0]["error"]


@pytest.fixture
def dead_letters(alice, settings, index_now):
    settings.VAULT_OUTBOX_MAX_ATTEMPTS = 1
    cubes = poison_rows(alice, index_now)
    index_now()
    assert IndexOutbox.objects.filter(dead_lettered_at__isnull=False).count() == len(cubes)
    return cubes


def test_admin_lists_and_retries_dead_letters_after_a_fix(dead_letters, alice, make_user, api_for, index_now):
    staff = make_user("operator")
    staff.is_staff = True
    staff.save(update_fields=["is_staff"])
    admin = api_for(staff)

    listed = admin.get("/api/v1/admin/index/dead-letters")
    assert listed.status_code == 200, listed.json()
    rows = listed.json()["results"]
    assert {r["cube_id"] for r in rows} == {str(c.id) for c in dead_letters}
    assert all(r["attempts"] == 1 and r["last_error"] and r["dead_lettered_at"] for r in rows)

    # the fix: clean values in the database; then retry one by id, the rest all at once
    MemCube.objects.filter(pk__in=[c.pk for c in dead_letters]).update(
        tags=["fixed"], semantic_type="fact", valid_from=None, valid_to=None
    )
    first = next(r for r in rows if r["cube_id"] == str(dead_letters[0].id))
    assert admin.post(
        "/api/v1/admin/index/dead-letters/retry", {"ids": [first["id"]]}, format="json"
    ).json() == {"retried": 1}
    assert index_now() == 1
    assert get_index().get([str(dead_letters[0].id)])[0]["tags"] == ["fixed"]
    assert admin.post("/api/v1/admin/index/dead-letters/retry", {}, format="json").json() == {
        "retried": len(dead_letters) - 1
    }
    assert index_now() == len(dead_letters) - 1
    assert admin.get("/api/v1/admin/index/dead-letters").json()["results"] == []
    hits = memory_search(actor=Subject(user=alice), query="poison", top_k=10).results
    assert {h.memory.id for h in hits} == {c.id for c in dead_letters}


def test_dead_letter_endpoints_are_for_staff_only(dead_letters, alice, api_for):
    client = api_for(alice)
    assert client.get("/api/v1/admin/index/dead-letters").status_code == 403
    assert client.post("/api/v1/admin/index/dead-letters/retry", {}, format="json").status_code == 403
    assert IndexOutbox.objects.filter(dead_lettered_at__isnull=False).count() == len(dead_letters)


def test_bad_retry_input_is_a_400(dead_letters, make_user, api_for):
    staff = make_user("operator")
    staff.is_staff = True
    staff.save(update_fields=["is_staff"])
    resp = api_for(staff).post("/api/v1/admin/index/dead-letters/retry", {"ids": ["one"]}, format="json")
    assert resp.status_code == 400 and "ids" in resp.json()["error"]["fields"]
    assert IndexOutbox.objects.filter(dead_lettered_at__isnull=False).count() == len(dead_letters)


def test_management_command_retries_dead_letters(dead_letters, capsys):
    MemCube.objects.filter(pk__in=[c.pk for c in dead_letters]).update(
        tags=[], semantic_type="", valid_from=None, valid_to=None
    )
    call_command("vault_reindex", "--retry-dead-letters")
    assert f"Retried {len(dead_letters)} dead letters; {len(dead_letters)} outbox rows applied" in (
        capsys.readouterr().out
    )
    assert not IndexOutbox.objects.filter(processed_at__isnull=True).exists()
