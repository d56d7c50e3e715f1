import pytest
from django.core.management import call_command

from accounts.models import User
from marketplace.models import Installation, Pack

pytestmark = pytest.mark.django_db


def test_seed_demo_is_idempotent():
    call_command("seed_demo")
    call_command("seed_demo")
    assert User.objects.filter(username="demo").count() == 1
    assert Pack.objects.count() == 3
    assert Installation.objects.filter(user__username="demo").count() == 1


def test_openapi_schema_documents_the_memory_api(client):
    resp = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert resp.status_code == 200
    paths = resp.json()["paths"]
    for p in (
        "/api/v1/memories",
        "/api/v1/memories/search",
        "/api/v1/memories/{cube_id}/history",
        "/api/v1/memories/provenance/{provenance_id}",
        "/api/v1/marketplace/packs",
    ):
        assert p in paths


def test_unknown_route_answers_json_404(client):
    resp = client.get("/api/v1/nothing-here")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
