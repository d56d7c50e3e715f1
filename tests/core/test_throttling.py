"""Costly endpoints are rate limited per user and per token, with Retry-After; counters live in Redis."""

from __future__ import annotations

import uuid

import pytest
from django.core.cache import caches

from accounts import services as account_services
from core.throttling import hit, parse_rate


def cache_keys_for(bucket: str, key: str) -> list[str]:
    import time

    from django.conf import settings

    scope = settings.MEMHUB_THROTTLE_NAMESPACE
    return [f"{scope}{bucket}:{key}:{int(time.time() // 60) + d}" for d in (-1, 0)]


pytestmark = pytest.mark.django_db


@pytest.fixture
def low_rates(settings):  # type: ignore[no-untyped-def]
    # Counters outlive a test in Redis: each test counts in a namespace of its own.
    settings.MEMHUB_THROTTLE_NAMESPACE = f"{uuid.uuid4().hex}:"
    settings.MEMHUB_THROTTLE_RATES = {
        "chat": "2/min",
        "pii_scan": "2/min",
        "watermark_detect": "2/min",
        "upload": "1/min",
        "login": "3/min",
    }


def test_rates_parse_and_bad_rates_are_refused():
    assert parse_rate("60/min") == (60, 60)
    assert parse_rate("5/s") == (5, 1)
    with pytest.raises(ValueError):
        parse_rate("many/min")


def test_counters_are_kept_in_redis(low_rates):
    # Several web processes share one budget only if the counters live in Redis.
    cache = caches["throttle"]
    assert type(cache).__name__ == "RedisCache"
    hit(bucket="chat", keys=["user:redis-check"])
    assert any(int(v) == 1 for v in cache.get_many(cache_keys_for("chat", "user:redis-check")).values())


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hello"}]}),
        ("/api/v1/governance/watermark/detect", {"text": "some leaked text"}),
    ],
)
def test_third_request_in_a_minute_answers_429_with_retry_after(low_rates, alice, api_for, path, body):
    api = api_for(alice)
    codes = [api.post(path, body, format="json").status_code for _ in range(3)]
    assert codes[2] == 429, codes
    assert all(c != 429 for c in codes[:2]), codes
    resp = api.post(path, body, format="json")
    assert resp.status_code == 429
    assert int(resp["Retry-After"]) >= 1
    err = resp.json()["error"]
    assert err["code"] == "throttled" and "throttled" in err["message"].lower()


def test_limit_is_per_user_not_per_token(low_rates, alice, api_for):
    body = {"messages": [{"role": "user", "content": "hello"}]}
    first, second = api_for(alice), api_for(alice)
    assert first.post("/v1/chat/completions", body, format="json").status_code != 429
    assert second.post("/v1/chat/completions", body, format="json").status_code != 429
    # A fresh token does not reset the user's budget.
    assert api_for(alice).post("/v1/chat/completions", body, format="json").status_code == 429


def test_other_users_are_not_limited_by_one_user(low_rates, alice, bob, api_for):
    body = {"messages": [{"role": "user", "content": "hello"}]}
    api = api_for(alice)
    for _ in range(3):
        api.post("/v1/chat/completions", body, format="json")
    assert api_for(bob).post("/v1/chat/completions", body, format="json").status_code != 429


def test_login_is_limited_per_username(low_rates, client):
    account_services.user_create(username="carol", password="carol-password-123")
    for _ in range(3):
        resp = client.post("/login/", {"username": "carol", "password": "wrong"})
        assert resp.status_code == 200  # the form again, with an error
    resp = client.post("/login/", {"username": "carol", "password": "carol-password-123"})
    assert resp.status_code == 429
    assert int(resp["Retry-After"]) >= 1
    assert b"Too many sign-in attempts" in resp.content
    assert "_auth_user_id" not in client.session


def test_hit_counts_nothing_once_over_the_limit(low_rates):
    keys = ["user:x-test-hit"]
    assert hit(bucket="upload", keys=keys) is None
    wait = hit(bucket="upload", keys=keys)
    assert wait is not None and 1 <= wait <= 61


def test_admin_sign_in_shares_the_login_limit(low_rates, client):
    for _ in range(3):
        assert client.post("/admin/login/", {"username": "root", "password": "guess"}).status_code == 200
    resp = client.post("/admin/login/", {"username": "root", "password": "guess"})
    assert resp.status_code == 429 and int(resp["Retry-After"]) >= 1
