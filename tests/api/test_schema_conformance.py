"""Property-based API run (schemathesis): every documented operation, with generated inputs, must never
answer a server error and every response must match the schema the API publishes at /api/schema/.

Bounded: a few examples per operation, no shrinking, derandomized (the same cases every run), so the
suite stays fast and reproducible. Requests go through the real Django WSGI stack with a real token."""

from __future__ import annotations

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from accounts import services as account_services

pytestmark = pytest.mark.django_db(transaction=False)

APP = get_wsgi_application()


# Loading the schema touches no database: it is generated from the code, at collection time.
schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", APP)


@pytest.fixture(autouse=True)
def _keep_test_connection():  # type: ignore[no-untyped-def]
    # Like Django's test client: keep the test's connection (and its transaction) across requests.
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    yield
    for signal in (request_started, request_finished):
        signal.connect(close_old_connections)


@pytest.fixture
def bearer(db) -> dict[str, str]:  # type: ignore[no-untyped-def]
    user = account_services.user_create(username="fuzzer", password="fuzzer-password-123")
    _, raw = account_services.api_token_create(user=user, name="fuzz")
    return {"Authorization": f"Bearer {raw}"}


@schema.parametrize()
@settings(
    max_examples=6,
    deadline=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_operation_conforms_and_never_fails(case, bearer):  # type: ignore[no-untyped-def]
    case.call_and_validate(headers=bearer, checks=[not_a_server_error, response_schema_conformance])
