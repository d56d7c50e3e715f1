"""docker/ is checked statically (no Docker engine here): the compose file is coherent with the code."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_services_and_settings():
    compose = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "milvus", "web", "worker", "beat", "inference-worker", "migrate"} <= set(
        services
    )
    env = services["web"]["environment"]
    assert env["DJANGO_SETTINGS_MODULE"] == "config.settings.production"
    for key in ("DATABASE_URL", "REDIS_URL", "MILVUS_URI", "DJANGO_SECRET_KEY"):
        assert key in env
    assert "inference" in services["inference-worker"]["command"]
    # secrets are never baked in: they must come from the environment
    assert "${DJANGO_SECRET_KEY:?" in (ROOT / "docker" / "compose.yaml").read_text()


def test_dockerfile_copies_every_app_and_pins_torch():
    text = (ROOT / "docker" / "Dockerfile").read_text()
    for app in (
        "config",
        "core",
        "accounts",
        "vault",
        "governance",
        "marketplace",
        "inference",
        "mip_protocol",
        "frontend",
    ):
        assert f"COPY {app} {app}" in text
    assert "torch==2.13.0" in text
    assert "USER memhub" in text
