"""Writes and orchestration for inference: base-model registration, chat completions, KV promotion and
demotion, adapter installation and distillation jobs.

The web process never imports torch from here at module level. Generation, KV builds, adapter checks
and distillation go through `inference.worker`, imported lazily: in this process when
`MEMHUB_INFERENCE_INLINE` (the embedded default), else on the `inference` Celery queue.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import Namespace, NamespaceKind, Organization
from core.errors import ApplicationError, NotFound, PermissionDenied
from governance.audit import audit_record
from governance.policy import Action, Subject, authorize
from inference import conf
from inference.models import (
    ArtifactStatus,
    BaseModel,
    DecisionAction,
    DistillationJob,
    Form,
    InstalledAdapter,
    JobStatus,
    KVArtifact,
    PackUsage,
    SchedulerDecision,
)
from inference.prompting import Message, PromptPlan, render_context, render_prefix
from inference.reader import memory_call_read
from inference.runtime.errors import AdapterRefused, ModelUnavailable
from inference.runtime.fingerprint import files_signature, fingerprint_model_dir, max_positions
from inference.scheduler import Schedule, schedule_request
from inference.selectors import is_pack, kv_artifact_find, pack_memories, packs_content_key

logger = logging.getLogger(__name__)

RETRIEVAL_ONLY_NOTICE = (
    "[MemHub retrieval-only mode: no generator is configured (set MEMHUB_MODEL_PATH to a Hugging Face "
    "model directory to generate answers). These are the memories your request retrieved.]"
)
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "memhub_adapter.json")


# --- base models ---------------------------------------------------------------------------------------


def base_model_current() -> BaseModel | None:
    """The configured generator's row, registered (or refreshed if its files changed) on first use.

    Returns None when no model is configured: the API then answers in retrieval-only mode.
    """
    path = conf.model_path()
    if not path:
        return None
    root = Path(path)
    signature = files_signature(root)
    existing = BaseModel.objects.filter(name=conf.model_name()).first()
    if existing and existing.path == str(root) and existing.files_signature == signature:
        return existing
    return base_model_register(path=str(root), name=conf.model_name())


@transaction.atomic
def base_model_register(*, path: str, name: str) -> BaseModel:
    """Fingerprint a model directory (hashing its files; no torch) and record it under `name`."""
    root = Path(path)
    fp = fingerprint_model_dir(root)
    fields = {
        "path": str(root),
        "architecture": fp.architecture,
        "model_type": fp.model_type,
        "config_sha256": fp.config_sha256,
        "weights_sha256": fp.weights_sha256,
        "tokenizer_sha256": fp.tokenizer_sha256,
        "fingerprint": fp.fingerprint,
        "files_signature": files_signature(root),
        "max_positions": max_positions(root),
    }
    model, created = BaseModel.objects.select_for_update().update_or_create(name=name, defaults=fields)
    if created:
        audit_record(
            actor=None,
            operation="inference.model.register",
            object_type="base_model",
            object_ids=[str(model.id)],
            details={"fingerprint": fp.fingerprint, "path": str(root), "architecture": fp.architecture},
        )
    return model


def _require_model() -> BaseModel:
    model = base_model_current()
    if model is None:
        raise ModelUnavailable("No generator is configured on this instance (MEMHUB_MODEL_PATH is not set).")
    return model


def _worker_payload(model: BaseModel) -> dict[str, Any]:
    return {"model_path": model.path, "dtype": conf.model_dtype(), "device": conf.model_device()}


def _worker() -> Any:
    from inference import worker  # torch enters here, and only here, in the web process

    return worker


# --- chat completions ----------------------------------------------------------------------------------


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


def _licensed(subject: Subject, schedule: Schedule) -> None:
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


def _memory_view(prepared: PreparedChat) -> list[dict[str, Any]]:
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


@transaction.atomic
def chat_prepare(*, subject: Subject, request: ChatRequest) -> PreparedChat:
    """Read the request, schedule memories, and record the decisions, usage, metering and audit."""
    if not subject.has_scope("inference"):
        raise PermissionDenied("This API token lacks the 'inference' scope.")
    base_model = base_model_current()
    namespaces = _resolve_namespaces(subject, request)
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
    _licensed(subject, schedule)
    prepared = PreparedChat(
        request=request,
        schedule=schedule,
        base_model=base_model,
        created=int(time.time()),
        user=subject.user if subject.is_user else None,
    )
    _record(subject, prepared)
    prepared.memories = _memory_view(prepared)
    if base_model is not None:
        prepared.payload = {
            **_worker_payload(base_model),
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
    from vault.services import memory_record_access

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
            _promote(model, schedule)
    memory_record_access(cube_ids=[u.memory.id for u in schedule.used], hit=True)
    forms: dict[str, int] = {}
    for used in schedule.used:
        forms[used.form] = forms.get(used.form, 0) + 1
    audit_record(
        actor=subject,
        operation="inference.chat",
        object_type="memory",
        object_ids=[str(u.memory.id) for u in schedule.used],
        details={
            "request_id": str(schedule.request_id),
            "mode": "generation" if model else "retrieval-only",
            "model_fingerprint": model.fingerprint if model else None,
            "forms": forms,
            "kv_artifact": str(schedule.kv_artifact.id) if schedule.kv_artifact else None,
            "adapter": str(schedule.adapter.id) if schedule.adapter else None,
            "intent": schedule.memory_call.intent,
            "decisions": len(schedule.decisions),
            "promoted": [ns.key for ns in schedule.promotion.namespaces] if schedule.promotion else [],
        },
    )


def _scheduled_packs(schedule: Schedule) -> list[Namespace]:
    """Packs the request drew on in any form (they earn usage towards KV promotion)."""
    return [u.memory.namespace for u in schedule.used if is_pack(u.memory.namespace)]


def _promote(model: BaseModel, schedule: Schedule) -> None:
    promotion = schedule.promotion
    assert promotion is not None
    artifact = kv_artifact_find(
        base_model=model,
        content_key=promotion.content_key,
        adapter_sha256=promotion.adapter_sha256,
        dtype=conf.model_dtype(),
    )
    if artifact is None:
        artifact = KVArtifact.objects.create(
            base_model=model,
            model_fingerprint=model.fingerprint,
            content_key=promotion.content_key,
            adapter_sha256=promotion.adapter_sha256,
            dtype=conf.model_dtype(),
            namespace_keys=[ns.key for ns in promotion.namespaces],
            status=ArtifactStatus.PENDING,
        )
        artifact.namespaces.set(promotion.namespaces)
    elif artifact.model_fingerprint == model.fingerprint and artifact.status in (
        ArtifactStatus.BUILDING,
        ArtifactStatus.PENDING,
    ):
        return  # already requested; a duplicate build would only redo the same work
    else:  # demoted earlier (the packs earned their way back), or built for the model's previous files
        KVArtifact.objects.filter(pk=artifact.pk).update(
            status=ArtifactStatus.PENDING, error="", model_fingerprint=model.fingerprint
        )
    artifact_id = str(artifact.id)

    def enqueue() -> None:
        from inference.tasks import kv_artifact_build_task

        kv_artifact_build_task.delay(artifact_id)

    transaction.on_commit(enqueue)


def _generate_remote(payload: dict[str, Any]) -> dict[str, Any]:
    from inference.tasks import chat_generate_task

    try:
        return chat_generate_task.delay(payload).get(timeout=conf.queue_timeout_s())
    except Exception as exc:  # broker, backend or worker failure: the caller gets a clear 503
        raise ModelUnavailable(f"The inference worker did not answer: {exc}") from exc


def _after_generation(prepared: PreparedChat, summary: dict[str, Any]) -> None:
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


def _retrieval_only_text(prepared: PreparedChat) -> str:
    schedule = prepared.schedule
    sections = [RETRIEVAL_ONLY_NOTICE]
    body = render_prefix(schedule.prefix_blocks) + render_context(
        schedule.context_blocks, start=len(schedule.prefix_blocks) + 1
    )
    sections.append(body.strip() or "No memory matched the request.")
    return "\n\n".join(sections)


def _memhub_block(prepared: PreparedChat, summary: dict[str, Any] | None) -> dict[str, Any]:
    schedule = prepared.schedule
    kv = schedule.kv_artifact
    return {
        "mode": "generation" if prepared.base_model else "retrieval-only",
        "request_id": str(schedule.request_id),
        "model_fingerprint": prepared.base_model.fingerprint if prepared.base_model else None,
        "memory_call": schedule.memory_call.as_dict(),
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


def chat_completion(*, subject: Subject, request: ChatRequest) -> dict[str, Any]:
    prepared = chat_prepare(subject=subject, request=request)
    summary: dict[str, Any] | None = None
    if prepared.payload is None:
        text, finish, usage = (
            _retrieval_only_text(prepared),
            "stop",
            {"prompt_tokens": 0, "completion_tokens": 0},
        )
    else:
        summary = (
            _worker().chat_run(prepared.payload) if conf.inline() else _generate_remote(prepared.payload)
        )
        _after_generation(prepared, summary)
        text, finish = summary["text"], summary["finish_reason"]
        usage = {"prompt_tokens": summary["prompt_tokens"], "completion_tokens": summary["completion_tokens"]}
    return {
        "id": prepared.completion_id,
        "object": "chat.completion",
        "created": prepared.created,
        "model": prepared.model_name,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]},
        "memhub": _memhub_block(prepared, summary),
    }


def _sse(data: dict[str, Any] | str) -> str:
    body = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {body}\n\n"


def chat_completion_stream(*, subject: Subject, request: ChatRequest) -> Iterator[str]:
    """Server-sent events in OpenAI's chunk shape; the last chunk carries `memhub` (with what the worker
    actually did), then `data: [DONE]`. Scheduling happens before the first byte, so a bad request
    still gets a plain JSON error rather than a broken stream."""
    prepared = chat_prepare(subject=subject, request=request)

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        return _sse(
            {
                "id": prepared.completion_id,
                "object": "chat.completion.chunk",
                "created": prepared.created,
                "model": prepared.model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
        )

    def events() -> Iterator[str]:
        yield chunk({"role": "assistant", "content": ""})
        summary: dict[str, Any] = {}
        if prepared.payload is None:
            yield chunk({"content": _retrieval_only_text(prepared)})
            finish = "stop"
        elif conf.inline():
            try:
                for delta in _worker().chat_stream(prepared.payload, on_done=summary.update):
                    yield chunk({"content": delta})
            except ApplicationError as exc:
                yield _sse({"error": {"code": exc.code, "message": exc.message}})
                return
            finish = summary.get("finish_reason", "stop")
        else:  # queue mode: the worker generates, the text arrives as one delta
            summary = _generate_remote(prepared.payload)
            yield chunk({"content": summary["text"]})
            finish = summary["finish_reason"]
        if summary:
            _after_generation(prepared, summary)
        usage = (
            {
                "prompt_tokens": summary.get("prompt_tokens", 0),
                "completion_tokens": summary.get("completion_tokens", 0),
            }
            if summary
            else {"prompt_tokens": 0, "completion_tokens": 0}
        )
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        yield chunk({}, finish, usage=usage, memhub=_memhub_block(prepared, summary or None))
        yield _sse("[DONE]")

    return events()


# --- KV artifacts ---------------------------------------------------------------------------------------


def kv_artifact_build(*, artifact_id: Any) -> KVArtifact:
    """Build (or confirm) one KV prefix. Idempotent: a ready artifact whose file exists is left alone."""
    with transaction.atomic():
        artifact = (
            KVArtifact.objects.select_for_update().select_related("base_model").filter(pk=artifact_id).first()
        )
        if artifact is None:
            raise NotFound("KV artifact not found.")
        if (
            artifact.status == ArtifactStatus.READY
            and artifact.file_path
            and Path(artifact.file_path).is_file()
            and artifact.model_fingerprint == artifact.base_model.fingerprint
        ):
            return artifact
        KVArtifact.objects.filter(pk=artifact.pk).update(status=ArtifactStatus.BUILDING, error="")
    model = artifact.base_model
    namespaces = {ns.key: ns for ns in artifact.namespaces.all()}
    packs = [
        (namespaces[key], pack_memories(namespace=namespaces[key]))
        for key in artifact.namespace_keys
        if key in namespaces
    ]
    if len(packs) != len(artifact.namespace_keys) or packs_content_key(packs=packs) != artifact.content_key:
        KVArtifact.objects.filter(pk=artifact.pk).update(
            status=ArtifactStatus.DEMOTED,
            error="the packs changed before the build ran; a new request will promote their current content",
        )
        artifact.refresh_from_db()
        return artifact
    adapter = (
        InstalledAdapter.objects.filter(
            base_model=model, sha256=artifact.adapter_sha256, status=ArtifactStatus.READY
        ).first()
        if artifact.adapter_sha256
        else None
    )
    path = conf.artifact_dir() / "kv" / model.fingerprint[:16] / f"{artifact.id}.safetensors"
    from inference.scheduler import block_for

    payload = {
        **_worker_payload(model),
        "path": str(path),
        "prefix_blocks": [block_for(c).__dict__ for _, cubes in packs for c in cubes],
        "adapter": {"path": adapter.path, "sha256": adapter.sha256} if adapter else None,
    }
    try:
        info = _worker().kv_build(payload)
    except Exception as exc:
        logger.exception("KV build %s failed", artifact.id)
        KVArtifact.objects.filter(pk=artifact.pk).update(status=ArtifactStatus.FAILED, error=str(exc)[:2000])
        artifact.refresh_from_db()
        return artifact
    with transaction.atomic():
        KVArtifact.objects.filter(pk=artifact.pk).update(
            status=ArtifactStatus.READY,
            file_path=str(path),
            token_ids_sha256=info["token_ids_sha256"],
            num_tokens=info["num_tokens"],
            file_bytes=info["file_bytes"],
            file_sha256=info["file_sha256"],
            build_seconds=info["build_s"],
            model_fingerprint=info["model_fingerprint"],
            error="",
        )
        audit_record(
            actor=None,
            operation="inference.kv.build",
            object_type="kv_artifact",
            object_ids=[str(artifact.id)],
            details={
                "namespaces": artifact.namespace_keys,
                "tokens": info["num_tokens"],
                "bytes": info["file_bytes"],
                "model_fingerprint": model.fingerprint,
            },
        )
    artifact.refresh_from_db()
    return artifact


def kv_artifacts_demote_cold(*, now: Any = None) -> int:
    """Delete prefixes unused for MEMHUB_KV_DEMOTE_AFTER_S; their packs go back to plaintext and must be
    used `MEMHUB_KV_PROMOTE_AFTER` times again to be promoted."""
    moment = now or timezone.now()
    cutoff = moment - timedelta(seconds=conf.kv_demote_after_s())
    cold = KVArtifact.objects.filter(status=ArtifactStatus.READY).filter(
        last_used_at__lt=cutoff
    ) | KVArtifact.objects.filter(
        status=ArtifactStatus.READY, last_used_at__isnull=True, updated_at__lt=cutoff
    )
    demoted = 0
    for artifact in cold.distinct():
        with transaction.atomic():
            locked = (
                KVArtifact.objects.select_for_update()
                .filter(pk=artifact.pk, status=ArtifactStatus.READY)
                .first()
            )
            if locked is None:
                continue
            if locked.file_path:
                Path(locked.file_path).unlink(missing_ok=True)
            KVArtifact.objects.filter(pk=locked.pk).update(status=ArtifactStatus.DEMOTED, file_path="")
            namespaces = list(locked.namespaces.all())
            PackUsage.objects.filter(base_model=locked.base_model, namespace__in=namespaces).update(uses=0)
            idle = f"last used {locked.last_used_at.isoformat()}" if locked.last_used_at else "never used"
            SchedulerDecision.objects.bulk_create(
                [
                    SchedulerDecision(
                        base_model=locked.base_model,
                        namespace=ns,
                        kv_artifact=locked,
                        form=Form.PLAINTEXT,
                        action=DecisionAction.DEMOTE,
                        reason=f"cold KV prefix removed ({idle}); pack back to plaintext",
                    )
                    for ns in namespaces
                ]
            )
            audit_record(
                actor=None,
                operation="inference.kv.demote",
                object_type="kv_artifact",
                object_ids=[str(locked.id)],
                details={"namespaces": locked.namespace_keys},
            )
            demoted += 1
    return demoted


# --- adapters -----------------------------------------------------------------------------------------


def _adapter_namespace(subject: Subject, namespace_key: str) -> Namespace:
    namespace = Namespace.objects.filter(key=namespace_key).first()
    if namespace is None:
        raise NotFound(f"Namespace '{namespace_key}' not found.")
    # ADMIN: the owner of an installation (or an org admin) decides what is installed into it.
    authorize(subject=subject, action=Action.ADMIN, namespace=namespace)
    return namespace


def adapter_install(
    *,
    subject: Subject,
    namespace_key: str,
    files: dict[str, bytes],
    name: str = "",
    declared_base_fingerprint: str | None = None,
    source: str = "upload",
) -> InstalledAdapter:
    """Install a published LoRA adapter for a namespace, validated against the served base model.

    Only `adapter_config.json`, `adapter_model.safetensors` and `memhub_adapter.json` are accepted;
    validation (architecture, targets, shapes, rank, declared base fingerprint) runs before anything is
    recorded, so a refused adapter leaves no row and no files behind.
    """
    namespace = _adapter_namespace(subject, namespace_key)
    model = _require_model()
    unknown = sorted(set(files) - set(ADAPTER_FILES))
    if unknown:
        raise AdapterRefused(
            f"Unexpected adapter file(s) {', '.join(unknown)}; an adapter is "
            "adapter_model.safetensors + adapter_config.json (pickle formats are refused)."
        )
    staging = conf.artifact_dir() / "adapters" / f"incoming-{uuid.uuid4().hex}"
    staging.mkdir(parents=True)
    try:
        for filename, content in files.items():
            (staging / filename).write_bytes(content)
        return _adapter_register(
            subject=subject,
            namespace=namespace,
            model=model,
            staging=staging,
            name=name,
            declared_base=declared_base_fingerprint,
            source=source,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _adapter_register(
    *,
    subject: Subject | None,
    namespace: Namespace,
    model: BaseModel,
    staging: Path,
    name: str,
    declared_base: str | None,
    source: str,
) -> InstalledAdapter:
    check = _worker().adapter_check(
        {**_worker_payload(model), "path": str(staging), "declared_base": declared_base}
    )
    final = conf.artifact_dir() / "adapters" / model.fingerprint[:16] / check["sha256"]
    if not final.exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(staging, final)
    with transaction.atomic():
        adapter, created = InstalledAdapter.objects.get_or_create(
            namespace=namespace,
            base_model=model,
            sha256=check["sha256"],
            defaults={
                "name": name[:200],
                "path": str(final),
                "rank": check["rank"],
                "alpha": check["alpha"],
                "target_modules": check["target_modules"],
                "source": source,
                "status": ArtifactStatus.READY,
                "installed_by": subject.user if subject and subject.is_user else None,
            },
        )
        if created:
            audit_record(
                actor=subject,
                operation="inference.adapter.install",
                namespace=namespace,
                object_type="adapter",
                object_ids=[str(adapter.id)],
                memory_kind="parameter",
                details={
                    "sha256": adapter.sha256,
                    "rank": adapter.rank,
                    "source": source,
                    "model_fingerprint": model.fingerprint,
                },
            )
    return adapter


# --- distillation ---------------------------------------------------------------------------------------

DISTILL_FIELDS: dict[str, tuple[type, float, float]] = {
    "steps": (int, 1, 0),
    "rank": (int, 1, 0),
    "alpha": (int, 1, 4096),
    "learning_rate": (float, 1e-7, 1),
    "seq_len": (int, 16, 0),
    "batch_size": (int, 1, 64),
    "seed": (int, 0, 2**31),
}


def _distill_config(raw: dict[str, Any], model: BaseModel) -> dict[str, Any]:
    limits = {"steps": conf.distill_max_steps(), "rank": conf.lora_max_rank(), "seq_len": model.max_positions}
    unknown = sorted(set(raw) - set(DISTILL_FIELDS))
    if unknown:
        raise ApplicationError(
            f"Unknown distillation option '{unknown[0]}'; known: {', '.join(DISTILL_FIELDS)}."
        )
    config: dict[str, Any] = {}
    for key, value in raw.items():
        kind, low, high = DISTILL_FIELDS[key]
        high = limits.get(key, high)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (kind is int and not isinstance(value, int))
        ):
            raise ApplicationError(
                f"Distillation option '{key}' must be a{'n integer' if kind is int else ' number'}."
            )
        if not low <= value <= high:
            raise ApplicationError(f"Distillation option '{key}' must be between {low} and {high}.")
        config[key] = kind(value)
    return config


@transaction.atomic
def distillation_start(
    *, subject: Subject, namespace_key: str, config: dict[str, Any] | None = None
) -> DistillationJob:
    namespace = _adapter_namespace(subject, namespace_key)
    model = _require_model()
    cfg = _distill_config(config or {}, model)
    if not pack_memories(namespace=namespace):
        raise ApplicationError(f"Namespace '{namespace_key}' has no plaintext memories to distil.")
    job = DistillationJob.objects.create(
        namespace=namespace,
        base_model=model,
        config=cfg,
        requested_by=subject.user if subject.is_user else None,
        total_steps=cfg.get("steps", 60),
    )
    audit_record(
        actor=subject,
        operation="inference.distill.start",
        namespace=namespace,
        object_type="distillation",
        object_ids=[str(job.id)],
        details={"config": cfg},
    )
    job_id = str(job.id)

    def enqueue() -> None:
        from inference.tasks import distillation_run_task

        distillation_run_task.delay(job_id)

    transaction.on_commit(enqueue)
    return job


def distillation_run(*, job_id: Any, progress_every: int = 1) -> DistillationJob:
    """Train the adapter and install it for the job's namespace. Idempotent: a finished job is left as is;
    a job found running (a redelivered task after a crash) starts over."""
    with transaction.atomic():
        job = (
            DistillationJob.objects.select_for_update()
            .select_related("namespace", "base_model")
            .filter(pk=job_id)
            .first()
        )
        if job is None:
            raise NotFound("Distillation job not found.")
        if job.status == JobStatus.SUCCEEDED:
            return job
        DistillationJob.objects.filter(pk=job.pk).update(
            status=JobStatus.RUNNING, started_at=timezone.now(), step=0, progress=0.0, error=""
        )
    cubes = pack_memories(namespace=job.namespace)
    text = "\n\n".join(f"{c.title}\n{c.text}".strip() for c in cubes)
    out_dir = conf.artifact_dir() / "distill" / str(job.id)

    def progress(step: int, total: int, loss: float) -> None:
        if step % progress_every and step != total:
            return
        fields: dict[str, Any] = {"step": step, "total_steps": total, "progress": step / total, "loss": loss}
        if step == 1:
            fields["first_loss"] = loss
        DistillationJob.objects.filter(pk=job.pk).update(**fields)

    try:
        result = _worker().distill(
            {
                **_worker_payload(job.base_model),
                "text": text,
                "out_dir": str(out_dir),
                "config": job.config,
                "source": {"namespace": job.namespace.key, "job": str(job.id)},
            },
            progress,
        )
        adapter = _adapter_register(
            subject=None,
            namespace=job.namespace,
            model=job.base_model,
            staging=Path(result["adapter_dir"]),
            name=f"distilled {job.namespace.key}",
            declared_base=job.base_model.fingerprint,
            source="distillation",
        )
    except Exception as exc:
        logger.exception("distillation %s failed", job.id)
        DistillationJob.objects.filter(pk=job.pk).update(
            status=JobStatus.FAILED, error=str(exc)[:2000], finished_at=timezone.now()
        )
        job.refresh_from_db()
        return job
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    DistillationJob.objects.filter(pk=job.pk).update(
        status=JobStatus.SUCCEEDED,
        progress=1.0,
        adapter=adapter,
        finished_at=timezone.now(),
        source_tokens=result["tokens"],
        source_memories=len(cubes),
        loss=result["final_loss"],
        first_loss=result["first_loss"],
    )
    job.refresh_from_db()
    return job
