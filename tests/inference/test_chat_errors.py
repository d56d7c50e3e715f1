"""Every bad input to /v1/chat/completions gets a 4xx in the project's error shape and writes nothing."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from governance.models import AuditEvent
from inference.models import SchedulerDecision

pytestmark = pytest.mark.django_db

URL = "/v1/chat/completions"
USER = {"role": "user", "content": "hello"}


def assert_refused(resp, status: int, code: str, fragment: str) -> None:  # type: ignore[no-untyped-def]
    assert resp.status_code == status, resp.content
    error = resp.json()["error"]
    assert error["code"] == code
    assert fragment in error["message"], error["message"]
    assert SchedulerDecision.objects.count() == 0
    assert not AuditEvent.objects.filter(operation="inference.chat").exists()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"model": "x"}, "messages: This field is required"),
        ({"messages": "hello"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
        ({"messages": [{"content": "hi"}]}, "role"),
        ({"messages": [{"role": "user", "content": 42}]}, "content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "Only text content parts",
        ),
        ({"messages": [{"role": "system", "content": "be nice"}]}, "At least one user message"),
        ({"messages": [{"role": "user", "content": "   "}]}, "At least one user message"),
        ({"messages": [USER], "max_tokens": 0}, "max_tokens"),
        ({"messages": [USER], "max_tokens": 100000}, "max_tokens"),
        ({"messages": [USER], "max_tokens": "many"}, "max_tokens"),
        ({"messages": [USER], "stream": "sometimes"}, "stream"),
        ({"messages": [USER], "n": 2}, "n"),
        ({"messages": [USER], "memhub": {"namespaces": "user:alice"}}, "namespaces"),
        ({"messages": [USER], "memhub": {"namespaces": []}}, "namespaces"),
        ({"messages": [USER], "memhub": {"top_k": 0}}, "top_k"),
        ({"messages": [USER], "memhub": "everything"}, "memhub"),
        ({"messages": [USER], "memhub": {"namespace": ["user:alice"]}}, "Unknown memhub option"),
    ],
)
def test_malformed_requests_are_400(alice, api_for, body, fragment):
    assert_refused(api_for(alice).post(URL, body, format="json"), 400, "invalid", fragment)


def test_a_body_that_is_not_an_object_is_400(alice, api_for):
    assert_refused(api_for(alice).post(URL, [USER], format="json"), 400, "invalid", "JSON object")


def test_invalid_json_is_400(alice, api_for):
    resp = api_for(alice).generic("POST", URL, "{not json", content_type="application/json")
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "parse_error"
    assert SchedulerDecision.objects.count() == 0


def test_an_unknown_namespace_is_404(alice, api_for):
    resp = api_for(alice).post(
        URL, {"messages": [USER], "memhub": {"namespaces": ["user:nobody"]}}, format="json"
    )
    assert_refused(resp, 404, "not_found", "Namespace 'user:nobody' not found")


def test_an_unknown_workspace_is_404(alice, api_for):
    resp = api_for(alice).post(URL, {"messages": [USER], "memhub": {"workspace": "acme"}}, format="json")
    assert_refused(resp, 404, "not_found", "Workspace 'acme' not found")


def test_oversized_messages_are_413(alice, api_for, settings):
    settings.MEMHUB_CHAT_MAX_CHARS = 100
    resp = api_for(alice).post(URL, {"messages": [{"role": "user", "content": "x" * 101}]}, format="json")
    assert_refused(resp, 413, "too_large", "limit is 100")


def test_too_many_messages_are_400(alice, api_for, settings):
    settings.MEMHUB_CHAT_MAX_MESSAGES = 2
    resp = api_for(alice).post(URL, {"messages": [USER, USER, USER]}, format="json")
    assert_refused(resp, 400, "invalid", "At most 2 messages")


def test_anonymous_callers_are_refused(db):
    resp = APIClient().post(URL, {"messages": [USER]}, format="json")
    assert resp.status_code in (401, 403)
    assert "error" in resp.json()


def test_a_token_without_the_inference_scope_is_403(alice, api_for):
    resp = api_for(alice, scopes=["memories:read"]).post(URL, {"messages": [USER]}, format="json")
    assert_refused(resp, 403, "permission_denied", "'inference' scope")
