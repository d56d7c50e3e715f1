"""Worker-side inference runtime: model registry, KV prefixes, LoRA adapters, distillation, generation.

Modules here import torch, transformers and peft at module level. Only inference workers (and the
benchmarks) import them; the web process reaches them lazily through `inference.services`, and only when
a generator is configured, so `manage.py runserver` starts without torch. `errors` and `fingerprint`
are the exceptions: they are pure Python so the web side can identify models and refuse artifacts.
"""
