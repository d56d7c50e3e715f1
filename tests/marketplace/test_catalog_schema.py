"""The catalog's and reviews' responses, on real data, match the schema the API publishes (the fuzzing
run in tests/api sees mostly empty catalogs and unknown packs; this one sees a listed, reviewed pack)."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.utils import timezone
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from accounts import services as account_services
from marketplace.models import Licence, Pack
from marketplace.services.catalog import catalog_sync
from vault.services import index_outbox_process

pytestmark = pytest.mark.django_db

APP = get_wsgi_application()
SCHEMA = schemathesis.openapi.from_wsgi("/api/schema/?format=json", APP)
PACK = "/api/v1/marketplace/packs/{publisher}/{slug}"


@pytest.fixture(autouse=True)
def _keep_test_connection():  # type: ignore[no-untyped-def]
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    yield
    for signal in (request_started, request_finished):
        signal.connect(close_old_connections)


@pytest.fixture
def reviewer(make_pack) -> dict[str, str]:  # type: ignore[no-untyped-def]
    pack = make_pack("tips", title="Tips", release=True)
    Pack.objects.filter(pk=pack.pk).update(
        summary="Tips for gardeners.", category="garden", base_models=["llama-3-8b"], forms=["plaintext"]
    )
    catalog_sync(pack_id=pack.pk)
    index_outbox_process()
    user = account_services.user_create(username="reviewer", password="reviewer-password-123")
    Licence.objects.create(
        pack=pack, holder_user=user, price_model="free", licence=pack.licence, starts_at=timezone.now()
    )
    _, raw = account_services.api_token_create(user=user, name="schema")
    return {"Authorization": f"Bearer {raw}"}


def _call(path: str, method: str, headers: dict[str, str], status: int, **kwargs: Any) -> Any:
    if "body" in kwargs:
        kwargs["media_type"] = "application/json"
    case = SCHEMA[path][method].Case(**kwargs)
    checks = [not_a_server_error, response_schema_conformance]
    response = case.call_and_validate(headers=headers, checks=checks)
    assert response.status_code == status, response.text
    return response


def test_catalog_and_review_responses_match_the_published_schema(reviewer):
    pp = {"publisher": "acme", "slug": "tips"}
    _call("/api/v1/marketplace/packs", "GET", reviewer, 200, query={"q": "gardeners", "category": ["garden"]})
    _call("/api/v1/marketplace/packs", "GET", reviewer, 200, query={"sort": "rating", "limit": 1})
    _call(PACK, "GET", reviewer, 200, path_parameters=pp)
    created = _call(f"{PACK}/reviews", "POST", reviewer, 201, path_parameters=pp, body={"rating": 4})
    review = {**pp, "review_id": created.json()["id"]}
    _call(f"{PACK}/reviews", "GET", reviewer, 200, path_parameters=pp)
    _call(
        f"{PACK}/reviews/{{review_id}}", "PATCH", reviewer, 200, path_parameters=review, body={"title": "Ok"}
    )
    _call(PACK, "GET", reviewer, 200, path_parameters=pp)  # with a review summary now
