"""Writes and orchestration for inference, one idea a module:

- `registry`: the served base model (registration, fingerprint) and the lazy worker entry point
- `chat`: chat completions (schedule, record the audited read, generate)
- `provenance`: the `memhub` block of an answer (namespaces consulted, memories, decisions)
- `sse`: streaming completions as server-sent events
- `kv`: KV prefix promotion, build and demotion
- `adapters`: adapter installation (uploads streamed to disk under a size cap)
- `distillation`: plaintext pack -> LoRA adapter jobs
- `purge`: the vault purge hook that deletes artifacts derived from erased memories

The web process never imports torch from here: generation goes through `inference.worker`, imported
lazily (`registry.worker_module`).
"""

from inference.services.adapters import (
    ADAPTER_FILES,
    adapter_install,
    adapter_namespace,
    adapter_register,
    adapter_upload_too_large,
)
from inference.services.chat import (
    ChatRequest,
    PreparedChat,
    chat_completion,
    chat_prepare,
)
from inference.services.distillation import (
    DISTILL_FIELDS,
    distillation_run,
    distillation_start,
    distillation_text,
)
from inference.services.kv import kv_artifact_build, kv_artifacts_demote_cold, kv_promote
from inference.services.provenance import RETRIEVAL_ONLY_NOTICE, memhub_block, namespaces_consulted
from inference.services.purge import adapters_retire, derived_artifacts_purge, kv_artifacts_delete
from inference.services.registry import (
    base_model_current,
    base_model_register,
    base_model_required,
    worker_payload,
)
from inference.services.sse import chat_completion_stream, sse_event

__all__ = [
    "ADAPTER_FILES",
    "DISTILL_FIELDS",
    "RETRIEVAL_ONLY_NOTICE",
    "ChatRequest",
    "PreparedChat",
    "adapter_install",
    "adapter_namespace",
    "adapter_register",
    "adapter_upload_too_large",
    "adapters_retire",
    "base_model_current",
    "base_model_register",
    "base_model_required",
    "chat_completion",
    "chat_completion_stream",
    "chat_prepare",
    "derived_artifacts_purge",
    "distillation_run",
    "distillation_start",
    "distillation_text",
    "kv_artifact_build",
    "kv_artifacts_delete",
    "kv_artifacts_demote_cold",
    "kv_promote",
    "memhub_block",
    "namespaces_consulted",
    "sse_event",
    "worker_payload",
]
