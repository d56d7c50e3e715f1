"""What a chat answer says about its memory: the `memhub` block of the response (non-streaming and the
last streamed chunk), and the text of a retrieval-only answer.

The block names every namespace the request consulted, each memory used with its citation label, form
and provenance (namespace, provenance id, version, content hash, source, licence), the adapter and KV
prefix, and the scheduler's decisions: a reader can tell where every part of an answer came from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from inference.models import Form
from inference.prompting import PromptPlan, render_listing

if TYPE_CHECKING:
    from inference.services.chat import PreparedChat

RETRIEVAL_ONLY_NOTICE = (
    "[MemHub retrieval-only mode: no generator is configured (set MEMHUB_MODEL_PATH to a Hugging Face "
    "model directory to generate answers). These are the memories your request retrieved.]"
)


def memory_view(prepared: PreparedChat) -> list[dict[str, Any]]:
    labels = PromptPlan(
        prefix_blocks=prepared.schedule.prefix_blocks, context_blocks=prepared.schedule.context_blocks
    ).labels()
    adapter = prepared.schedule.adapter
    out: list[dict[str, Any]] = []
    if adapter is not None:
        out.append(
            {
                "id": None,
                "label": None,
                "form": Form.LORA,
                "score": None,
                "namespace": adapter.namespace.key,
                "title": adapter.name,
                "reason": "installed pack served by its LoRA adapter",
                "provenance": {
                    "adapter_id": str(adapter.id),
                    "adapter_sha256": adapter.sha256,
                    "source": adapter.source,
                },
            }
        )
    for used in prepared.schedule.used:
        cube = used.memory
        out.append(
            {
                "id": str(cube.id),
                "label": labels.get(str(cube.id)),
                "form": used.form,
                "score": round(used.score, 6) if used.score is not None else None,
                "namespace": cube.namespace.key,
                "title": cube.title,
                "reason": used.reason,
                "provenance": {
                    "provenance_id": str(cube.provenance_id),
                    "version": cube.version,
                    "content_sha256": cube.content_sha256,
                    "source": cube.source,
                    "licence": cube.licence,
                    "created_at": cube.created_at.isoformat(),
                    "valid_from": cube.valid_from.isoformat() if cube.valid_from else None,
                    "valid_to": cube.valid_to.isoformat() if cube.valid_to else None,
                },
            }
        )
    return out


def namespaces_consulted(prepared: PreparedChat) -> list[dict[str, Any]]:
    """Every namespace the request searched or served from, with what it contributed."""
    schedule = prepared.schedule
    out = []
    for ns in prepared.namespaces:
        used = [u for u in schedule.used if u.memory.namespace_id == ns.id]
        forms = {u.form for u in used}
        if schedule.adapter is not None and schedule.adapter.namespace_id == ns.id:
            forms.add(Form.LORA)
        out.append({"namespace": ns.key, "kind": ns.kind, "memories_used": len(used), "forms": sorted(forms)})
    return out


def retrieval_only_text(prepared: PreparedChat) -> str:
    schedule = prepared.schedule
    blocks = [*schedule.prefix_blocks, *schedule.context_blocks]
    keys = ", ".join(ns.key for ns in prepared.namespaces) or "none"
    body = render_listing(blocks) or "No memory matched the request."
    return f"{RETRIEVAL_ONLY_NOTICE}\n\nNamespaces consulted: {keys}\n\n{body}"


def memhub_block(prepared: PreparedChat, summary: dict[str, Any] | None) -> dict[str, Any]:
    schedule = prepared.schedule
    kv = schedule.kv_artifact
    return {
        "mode": "generation" if prepared.base_model else "retrieval-only",
        "request_id": str(schedule.request_id),
        "model_fingerprint": prepared.base_model.fingerprint if prepared.base_model else None,
        "memory_call": schedule.memory_call.as_dict(),
        "namespaces": namespaces_consulted(prepared),
        "memories": prepared.memories,
        "kv": (
            {
                "artifact_id": str(kv.id),
                "tokens": kv.num_tokens,
                "namespaces": kv.namespace_keys,
                "used": bool(summary and summary.get("kv_used")),
                "reason": (summary or {}).get("kv_skipped_reason", ""),
            }
            if kv
            else None
        ),
        "adapter": (
            {
                "id": str(schedule.adapter.id),
                "namespace": schedule.adapter.namespace.key,
                "sha256": schedule.adapter.sha256,
            }
            if schedule.adapter
            else None
        ),
        "decisions": [
            {
                "form": d.form,
                "action": d.action,
                "reason": d.reason,
                "namespace": d.namespace.key if d.namespace else None,
                "memory_id": str(d.memory.id) if d.memory else None,
            }
            for d in schedule.decisions
        ],
        "budget": schedule.budget,
        "timings": (
            {k: summary[k] for k in ("ttft_ms", "total_ms", "adapter_load_ms") if k in summary}
            if summary
            else {}
        ),
        "sampling": "greedy",
    }
