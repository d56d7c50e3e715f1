"""Chat orchestration: read the request, schedule memories, record what was read, generate.

A request is prepared in one transaction (scheduling decisions, usage, the audited read of every memory
put in the prompt, KV promotion), then generated inline or on the `inference` queue. The answer and its
`memhub` block (`provenance.memhub_block`) say which namespaces were consulted and which memory went in
which form; memory text reaches the model only as quoted records (`inference.prompting`).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import Namespace, NamespaceKind, Organization
from core.errors import NotFound, PermissionDenied
from governance.audit import audit_record
from governance.policy import Subject
from inference import conf
from inference.models import (
    BaseModel,
    DecisionAction,
    Form,
    InstalledAdapter,
    KVArtifact,
    PackUsage,
    SchedulerDecision,
)
from inference.prompting import Message
from inference.reader import memory_call_read
from inference.runtime.errors import ModelUnavailable
from inference.scheduler import Schedule, schedule_request
from inference.selectors import is_pack
from inference.services.kv import kv_promote
from inference.services.provenance import memhub_block, memory_view, retrieval_only_text
from inference.services.registry import base_model_current, worker_module, worker_payload

CHAT_OPERATION = "inference.chat"


@dataclass
class ChatRequest:
    messages: list[Message]
    max_new_tokens: int
    namespaces: list[str] | None = None
    workspace: str | None = None
    top_k: int = 8
    stream: bool = False
    model: str = ""


@dataclass
class PreparedChat:
    request: ChatRequest
    schedule: Schedule
    base_model: BaseModel | None
    created: int
    namespaces: list[Namespace] = field(default_factory=list)  # every namespace the request consulted
    payload: dict[str, Any] | None = None
    memories: list[dict[str, Any]] = field(default_factory=list)
    user: Any = None

    @property
    def completion_id(self) -> str:
        return f"chatcmpl-{self.schedule.request_id.hex}"

    @property
    def model_name(self) -> str:
        return self.base_model.name if self.base_model else "memhub-retrieval-only"


def _resolve_namespaces(subject: Subject, request: ChatRequest) -> list[Namespace]:
    from vault.selectors import namespaces_readable, namespaces_resolve

    if request.workspace:
        org = Organization.objects.filter(slug=request.workspace).first()
        if org is None or org.id not in subject.roles:
            raise NotFound(f"Workspace '{request.workspace}' not found.")
        scoped = [ns for ns in namespaces_readable(actor=subject) if ns.organization_id == org.id]
        if request.namespaces:
            named = namespaces_resolve(actor=subject, keys=request.namespaces)
            scoped += [ns for ns in named if ns not in scoped]
        return scoped
    if request.namespaces:
        return namespaces_resolve(actor=subject, keys=request.namespaces)
    return list(namespaces_readable(actor=subject))


def _licensed(schedule: Schedule) -> None:
    """A licensed memory from an installed pack is used only while its installation exists: dropping it
    here keeps a removed or foreign installation's memories out of prompts even if an index is stale."""
    from marketplace.models import Installation

    pack_ids = {
        u.memory.namespace_id
        for u in schedule.used
        if u.memory.licence and u.memory.namespace.kind == NamespaceKind.INSTALLATION
    }
    if not pack_ids:
        return
    installed = set(
        Installation.objects.filter(namespace_id__in=pack_ids).values_list("namespace_id", flat=True)
    )
    refused = {u.memory.id for u in schedule.used if u.memory.namespace_id in pack_ids - installed}
    if not refused:
        return
    for used in [u for u in schedule.used if u.memory.id in refused]:
        schedule.note(
            form=Form.NONE,
            action=DecisionAction.SKIP,
            namespace=used.memory.namespace,
            memory=used.memory,
            reason=f"licence '{used.memory.licence}' has no installation",
        )
    schedule.used = [u for u in schedule.used if u.memory.id not in refused]
    schedule.context_blocks = [b for b in schedule.context_blocks if uuid.UUID(b.memory_id) not in refused]
    schedule.prefix_blocks = [b for b in schedule.prefix_blocks if uuid.UUID(b.memory_id) not in refused]


def _licensed_namespaces(
    subject: Subject, request: ChatRequest, namespaces: list[Namespace]
) -> tuple[list[Namespace], list[tuple[Namespace, Exception]]]:
    """The namespaces the caller's licences let it use now. An installed pack the request names whose
    licence does not cover it (expired, refunded, no seat, quota used up) is the 402; one reached only by
    default is left out, and the answer's decisions say why. Nothing usable left at all: the 402."""
    from vault.hooks import use_refusals

    refusals = use_refusals(actor=subject, namespaces=namespaces, form=Form.PLAINTEXT)
    if not refusals:
        return namespaces, []
    named = set(request.namespaces or [])
    for ns in namespaces:
        if ns.pk in refusals and ns.key in named:
            raise refusals[ns.pk]
    kept = [ns for ns in namespaces if ns.pk not in refusals]
    if not kept:
        raise next(iter(refusals.values()))
    return kept, [(ns, refusals[ns.pk]) for ns in namespaces if ns.pk in refusals]


def _meter(subject: Subject, schedule: Schedule) -> None:
    """Count what this request uses of each installed pack on its licence: one retrieval per memory put
    in the prompt as text (a quota running out drops the rest of that pack's memories, noted), one KV use
    per pack served from a prefix, one adapter use, and one chat per pack drawn on in any form."""
    from vault.hooks import use_record

    counts: dict[Any, int] = {}
    for used in schedule.used:
        if used.form == Form.PLAINTEXT and is_pack(used.memory.namespace):
            counts[used.memory.namespace_id] = counts.get(used.memory.namespace_id, 0) + 1
    if counts:
        granted = use_record(actor=subject, counts=counts, kind="retrievals")
        dropped: set[Any] = set()
        for used in schedule.used:
            ns_id = used.memory.namespace_id
            if used.form != Form.PLAINTEXT or ns_id not in counts:
                continue
            if granted.get(ns_id, 0) > 0:
                granted[ns_id] -= 1
                continue
            dropped.add(used.memory.id)
            schedule.note(
                form=Form.NONE,
                action=DecisionAction.SKIP,
                namespace=used.memory.namespace,
                memory=used.memory,
                reason="the licence's retrieval quota for this period is used up",
            )
        if dropped:
            schedule.used = [u for u in schedule.used if u.memory.id not in dropped]
            schedule.context_blocks = [
                b for b in schedule.context_blocks if uuid.UUID(b.memory_id) not in dropped
            ]
    kv_packs = {u.memory.namespace_id for u in schedule.used if u.form == Form.KV}
    if kv_packs:
        use_record(actor=subject, counts=dict.fromkeys(kv_packs, 1), kind="kv_uses")
    if schedule.adapter is not None:
        use_record(actor=subject, counts={schedule.adapter.namespace_id: 1}, kind="adapter_uses")
    drawn = {u.memory.namespace_id for u in schedule.used if is_pack(u.memory.namespace)}
    if schedule.adapter is not None:
        drawn.add(schedule.adapter.namespace_id)
    if drawn:
        use_record(actor=subject, counts=dict.fromkeys(drawn, 1), kind="chats")


@transaction.atomic
def chat_prepare(*, subject: Subject, request: ChatRequest) -> PreparedChat:
    """Read the request, schedule memories, and record the decisions, usage, reads and audit."""
    if not subject.has_scope("inference"):
        raise PermissionDenied("This API token lacks the 'inference' scope.")
    base_model = base_model_current()
    namespaces, refused = _licensed_namespaces(subject, request, _resolve_namespaces(subject, request))
    call = memory_call_read(messages=request.messages)
    schedule = schedule_request(
        subject=subject,
        base_model=base_model,
        namespaces=namespaces,
        memory_call=call,
        messages=request.messages,
        max_new_tokens=request.max_new_tokens,
        top_k=request.top_k,
        dtype=conf.model_dtype(),
    )
    if base_model is None:
        schedule.note(
            form=Form.PLAINTEXT,
            action=DecisionAction.FALLBACK,
            reason="retrieval-only mode: no generator configured (MEMHUB_MODEL_PATH unset)",
        )
    for ns, error in refused:
        schedule.note(
            form=Form.NONE,
            action=DecisionAction.SKIP,
            namespace=ns,
            reason=str(getattr(error, "message", error)),
        )
    _licensed(schedule)
    _meter(subject, schedule)
    prepared = PreparedChat(
        request=request,
        schedule=schedule,
        base_model=base_model,
        created=int(time.time()),
        namespaces=namespaces,
        user=subject.user if subject.is_user else None,
    )
    _record(subject, prepared)
    prepared.memories = memory_view(prepared)
    if base_model is not None:
        prepared.payload = {
            **worker_payload(base_model),
            "request_id": str(schedule.request_id),
            "prefix_blocks": [b.__dict__ for b in schedule.prefix_blocks],
            "context_blocks": [b.__dict__ for b in schedule.context_blocks],
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_new_tokens": request.max_new_tokens,
            "kv": (
                {
                    "path": schedule.kv_artifact.file_path,
                    "token_ids_sha256": schedule.kv_artifact.token_ids_sha256,
                    "adapter_sha256": schedule.kv_artifact.adapter_sha256,
                }
                if schedule.kv_artifact
                else None
            ),
            "adapter": (
                {"path": schedule.adapter.path, "sha256": schedule.adapter.sha256}
                if schedule.adapter
                else None
            ),
        }
    return prepared


def _record(subject: Subject, prepared: PreparedChat) -> None:
    from vault.services import memory_reads_record

    schedule, model = prepared.schedule, prepared.base_model
    user = subject.user if subject.is_user else None
    SchedulerDecision.objects.bulk_create(
        [
            SchedulerDecision(
                request_id=schedule.request_id,
                user=user,
                base_model=model,
                namespace=d.namespace,
                memory_id=d.memory.id if d.memory else None,
                kv_artifact=d.kv_artifact,
                adapter=d.adapter,
                form=d.form,
                action=d.action,
                reason=d.reason[:300],
                tokens=d.tokens,
                score=d.score,
            )
            for d in schedule.decisions
        ]
    )
    now = timezone.now()
    if model is not None:
        for ns in {ns.id: ns for ns in schedule.packs_used + _scheduled_packs(schedule)}.values():
            usage, _ = PackUsage.objects.select_for_update().get_or_create(base_model=model, namespace=ns)
            PackUsage.objects.filter(pk=usage.pk).update(uses=F("uses") + 1, last_used_at=now)
        if schedule.kv_artifact is not None:
            KVArtifact.objects.filter(pk=schedule.kv_artifact.pk).update(
                use_count=F("use_count") + 1, last_used_at=now
            )
        if schedule.adapter is not None:
            InstalledAdapter.objects.filter(pk=schedule.adapter.pk).update(
                use_count=F("use_count") + 1, last_used_at=now
            )
        if schedule.promotion is not None:
            kv_promote(model=model, schedule=schedule)
    forms: dict[str, int] = {}
    for used in schedule.used:
        forms[used.form] = forms.get(used.form, 0) + 1
    details = {
        "request_id": str(schedule.request_id),
        "mode": "generation" if model else "retrieval-only",
        "model_fingerprint": model.fingerprint if model else None,
        "namespaces": [ns.key for ns in prepared.namespaces],
        "forms": forms,
        "kv_artifact": str(schedule.kv_artifact.id) if schedule.kv_artifact else None,
        "adapter": str(schedule.adapter.id) if schedule.adapter else None,
        "intent": schedule.memory_call.intent,
        "decisions": len(schedule.decisions),
        "promoted": [ns.key for ns in schedule.promotion.namespaces] if schedule.promotion else [],
    }
    cubes = [u.memory for u in schedule.used]
    if cubes:
        # The one audited-read path: an audit entry per namespace read, and the memories' access and
        # hit statistics, exactly as the Memory API records a read.
        memory_reads_record(actor=subject, cubes=cubes, operation=CHAT_OPERATION, hit=True, details=details)
    else:  # no memory was read, but the request itself is still on the record
        audit_record(
            actor=subject, operation=CHAT_OPERATION, object_type="memory", object_ids=[], details=details
        )


def _scheduled_packs(schedule: Schedule) -> list[Namespace]:
    """Packs the request drew on in any form (they earn usage towards KV promotion)."""
    return [u.memory.namespace for u in schedule.used if is_pack(u.memory.namespace)]


def generate_remote(payload: dict[str, Any]) -> dict[str, Any]:
    from inference.tasks import chat_generate_task

    try:
        return chat_generate_task.delay(payload).get(timeout=conf.queue_timeout_s())
    except Exception as exc:  # broker, backend or worker failure: the caller gets a clear 503
        raise ModelUnavailable(f"The inference worker did not answer: {exc}") from exc


def after_generation(prepared: PreparedChat, summary: dict[str, Any]) -> None:
    """Record what actually happened on the worker when it differs from the plan."""
    schedule = prepared.schedule
    if schedule.kv_artifact is not None and not summary.get("kv_used"):
        reason = summary.get("kv_skipped_reason") or "prefix not used"
        SchedulerDecision.objects.create(
            request_id=schedule.request_id,
            user=prepared.user,
            base_model=prepared.base_model,
            kv_artifact=schedule.kv_artifact,
            form=Form.PLAINTEXT,
            action=DecisionAction.FALLBACK,
            reason=f"worker ran the prefix as plaintext: {reason}"[:300],
            tokens=schedule.kv_artifact.num_tokens,
        )
        for memory in prepared.memories:
            if memory["form"] == Form.KV:
                memory["form"] = Form.PLAINTEXT
                memory["reason"] += f" (fell back to plaintext: {reason})"
    dropped = set(summary.get("dropped_context") or [])
    if dropped:
        prepared.memories = [m for m in prepared.memories if m["id"] not in dropped]


def chat_completion(*, subject: Subject, request: ChatRequest) -> dict[str, Any]:
    prepared = chat_prepare(subject=subject, request=request)
    summary: dict[str, Any] | None = None
    if prepared.payload is None:
        text, finish, usage = (
            retrieval_only_text(prepared),
            "stop",
            {"prompt_tokens": 0, "completion_tokens": 0},
        )
    else:
        summary = (
            worker_module().chat_run(prepared.payload) if conf.inline() else generate_remote(prepared.payload)
        )
        after_generation(prepared, summary)
        text, finish = summary["text"], summary["finish_reason"]
        usage = {"prompt_tokens": summary["prompt_tokens"], "completion_tokens": summary["completion_tokens"]}
    return {
        "id": prepared.completion_id,
        "object": "chat.completion",
        "created": prepared.created,
        "model": prepared.model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]},
        "memhub": memhub_block(prepared, summary),
    }
