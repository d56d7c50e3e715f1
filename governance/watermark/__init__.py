"""Per-installation watermarks for memory packs: plaintext, LoRA adapters and (by construction) KV caches.

Plain Python on numpy and safetensors (no Django, no torch), so the web process, the install path
and a forensic command can all import it:

    marked = watermark_texts(memories, key=K, installation_id=iid)           # install, plaintext
    extra = canary_memories(key=K, installation_id=iid,
                            vocabulary=pack_vocabulary(memories))             # install, canaries
    adapter = watermark_adapter(adapter_bytes, key=K, installation_id=iid)    # install, LoRA
    kv_text = kv_build_text(memory, key=K, installation_id=iid)              # install, KV
    verdict = detect_text(leaked, key=K, candidates=pack_installation_ids)    # forensics
    verdict = detect_adapter(tensors, key=K, candidates=ids, reference=original_tensors)

`K` is the instance's watermark secret (at least 16 bytes); never derive it from public data.
"""

from governance.watermark.adapter import (
    AdapterAttribution,
    AdapterDetector,
    AdapterFile,
    detect_adapter,
    dump_adapter,
    load_adapter,
    watermark_adapter,
    watermark_tensors,
)
from governance.watermark.canary import canary_memories, pack_vocabulary
from governance.watermark.kv import attribute_kv_cache, kv_build_text, kv_candidate_texts
from governance.watermark.text import (
    DEFAULT_ALPHA,
    CandidateScore,
    TextAttribution,
    capacity,
    detect_text,
    observe,
    watermark_text,
    watermark_texts,
)

__all__ = [
    "DEFAULT_ALPHA",
    "AdapterAttribution",
    "AdapterDetector",
    "AdapterFile",
    "CandidateScore",
    "TextAttribution",
    "attribute_kv_cache",
    "canary_memories",
    "capacity",
    "detect_adapter",
    "detect_text",
    "dump_adapter",
    "kv_build_text",
    "kv_candidate_texts",
    "load_adapter",
    "observe",
    "pack_vocabulary",
    "watermark_adapter",
    "watermark_tensors",
    "watermark_text",
    "watermark_texts",
]
