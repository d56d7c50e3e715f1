"""The web process serves the API without importing torch, transformers or peft."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CODE = """
import os, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings.test"
import django
django.setup()
from django.urls import resolve
import config.asgi, config.urls, inference.apis, inference.services, inference.tasks, inference.scheduler
assert resolve("/v1/chat/completions").func.view_class.__name__ == "ChatCompletionApi"
heavy = sorted(m for m in ("torch", "transformers", "peft", "safetensors", "spacy", "presidio_analyzer",
                        "onnxruntime", "sentence_transformers") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


def test_loading_the_api_imports_no_ml_framework():
    result = subprocess.run(
        [sys.executable, "-c", CODE], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY=\n" in result.stdout, result.stdout
