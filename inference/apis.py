"""OpenAI-compatible chat completions with MemHub's memory extension, plus distillation jobs.

    POST /v1/chat/completions   {"model", "messages", "stream", "max_tokens", "memhub": {...}}
    POST /v1/memhub/distillations           {"namespace", "config"}
    GET  /v1/memhub/distillations/<id>
    POST /v1/memhub/adapters                multipart: namespace, adapter_config, adapter_model
    GET  /v1/memhub/requests/<id>/decisions

Views validate, call one service, and serialise. Errors use the project's JSON error shape.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.errors import ApplicationError
from core.throttling import throttles
from governance.policy import Subject
from inference import conf, selectors, services
from inference.prompting import Message
from inference.uploads import CappedTemporaryFileUploadHandler

ROLES = ("system", "user", "assistant", "tool", "developer")


class ContentField(serializers.Field):
    """OpenAI content: a string, or a list of parts of which only text parts are read."""

    default_error_messages = {"invalid": "Message content must be a string or a list of text parts."}

    def to_internal_value(self, data: Any) -> str:
        if isinstance(data, str):
            return data
        if isinstance(data, list):
            texts = []
            for part in data:
                if (
                    not isinstance(part, dict)
                    or part.get("type") != "text"
                    or not isinstance(part.get("text"), str)
                ):
                    raise serializers.ValidationError("Only text content parts are supported.")
                texts.append(part["text"])
            return "\n".join(texts)
        self.fail("invalid")
        return ""

    def to_representation(self, value: Any) -> Any:
        return value


class MessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=ROLES)
    content = ContentField(allow_null=True, required=False, default="")


class MemhubSerializer(serializers.Serializer):
    namespaces = serializers.ListField(
        child=serializers.CharField(max_length=160), required=False, allow_empty=False, max_length=50
    )
    workspace = serializers.SlugField(max_length=64, required=False)
    top_k = serializers.IntegerField(min_value=1, max_value=50, required=False)

    def to_internal_value(self, data: Any) -> Any:
        # A misspelt key ("namespace") must not silently widen the request to every readable namespace.
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {unknown[0]: f"Unknown memhub option; known: {', '.join(self.fields)}."}
                )
        return super().to_internal_value(data)


class ChatCompletionApi(APIView):
    throttle_classes = throttles("chat")

    @extend_schema_serializer(component_name="ChatCompletionInput")
    class InputSerializer(serializers.Serializer):
        model = serializers.CharField(max_length=200, required=False, allow_blank=True)
        messages = MessageSerializer(many=True, allow_empty=False)
        stream = serializers.BooleanField(required=False, default=False)
        max_tokens = serializers.IntegerField(min_value=1, required=False)
        max_completion_tokens = serializers.IntegerField(min_value=1, required=False)
        temperature = serializers.FloatField(min_value=0, max_value=2, required=False)
        n = serializers.IntegerField(min_value=1, max_value=1, required=False)
        memhub = MemhubSerializer(required=False)

        def validate_messages(self, value: list[dict[str, Any]]) -> list[dict[str, Any]]:
            if len(value) > conf.max_messages():
                raise serializers.ValidationError(f"At most {conf.max_messages()} messages.")
            if not any(m["role"] == "user" and (m.get("content") or "").strip() for m in value):
                raise serializers.ValidationError("At least one user message with content is required.")
            return value

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            limit = conf.max_new_tokens()
            for field in ("max_tokens", "max_completion_tokens"):
                if attrs.get(field, 0) > limit:
                    raise serializers.ValidationError(
                        {field: f"Ensure this value is less than or equal to {limit}."}
                    )
            return attrs

    @extend_schema(
        request=InputSerializer,
        responses={200: OpenApiTypes.OBJECT, 201: OpenApiTypes.OBJECT},
        tags=["inference"],
    )
    def post(self, request: Request) -> Response | StreamingHttpResponse:
        if not isinstance(request.data, dict):
            raise ApplicationError("The request body must be a JSON object.")
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        messages = [Message(m["role"], m.get("content") or "") for m in data["messages"]]
        size = sum(len(m.content) for m in messages)
        if size > conf.max_chars():
            raise ApplicationError(
                f"The messages hold {size} characters; the limit is {conf.max_chars()}.",
                status=413,
                code="too_large",
            )
        memhub = data.get("memhub") or {}
        chat = services.ChatRequest(
            messages=messages,
            stream=data["stream"],
            model=data.get("model", ""),
            max_new_tokens=data.get("max_completion_tokens")
            or data.get("max_tokens")
            or conf.default_new_tokens(),
            namespaces=memhub.get("namespaces"),
            workspace=memhub.get("workspace"),
            top_k=memhub.get("top_k") or conf.top_k(),
        )
        subject = Subject.from_request(request, operation="inference.chat")
        if chat.stream:
            events = services.chat_completion_stream(subject=subject, request=chat)
            response = StreamingHttpResponse(_for_server(request, events), content_type="text/event-stream")
            response["Cache-Control"] = "no-cache"
            response["X-Accel-Buffering"] = "no"  # let proxies pass each event through as it comes
            return response
        return Response(services.chat_completion(subject=subject, request=chat))


def _for_server(request: Request, events: Iterator[str]) -> Iterator[str] | AsyncIterator[str]:
    """Django buffers a sync iterator whole under ASGI (and an async one under WSGI): hand each server
    the kind it streams, so tokens reach the client as they are generated."""
    if isinstance(request._request, ASGIRequest):
        return _async_events(events)
    return events


async def _async_events(events: Iterator[str]) -> AsyncIterator[str]:
    done = object()
    # thread_sensitive: every step runs on the thread that owns this request's database connection.
    step = sync_to_async(lambda: next(events, done), thread_sensitive=True)
    while (item := await step()) is not done:
        yield str(item)


def _job_view(job: Any) -> dict[str, Any]:
    return {
        "id": str(job.id),
        "namespace": job.namespace.key,
        "status": job.status,
        "progress": job.progress,
        "step": job.step,
        "total_steps": job.total_steps,
        "first_loss": job.first_loss,
        "loss": job.loss,
        "config": job.config,
        "error": job.error or None,
        "adapter": (
            {"id": str(job.adapter.id), "sha256": job.adapter.sha256, "rank": job.adapter.rank}
            if job.adapter_id
            else None
        ),
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


class DistillationCreateApi(APIView):
    @extend_schema_serializer(component_name="DistillationCreateInput")
    class InputSerializer(serializers.Serializer):
        namespace = serializers.CharField(max_length=160)
        config = serializers.DictField(required=False, default=dict)

    @extend_schema(
        request=InputSerializer,
        responses={200: OpenApiTypes.OBJECT, 201: OpenApiTypes.OBJECT},
        tags=["inference"],
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        job = services.distillation_start(
            subject=Subject.from_request(request, operation="inference.distill"),
            namespace_key=serializer.validated_data["namespace"],
            config=serializer.validated_data["config"],
        )
        job.refresh_from_db()
        return Response(_job_view(job), status=status.HTTP_202_ACCEPTED)


class DistillationDetailApi(APIView):
    @extend_schema(responses={200: OpenApiTypes.OBJECT, 201: OpenApiTypes.OBJECT}, tags=["inference"])
    def get(self, request: Request, job_id: str) -> Response:
        return Response(
            _job_view(selectors.distillation_get(subject=Subject.from_request(request), job_id=job_id))
        )


class AdapterInstallApi(APIView):
    throttle_classes = throttles("upload")

    @extend_schema_serializer(component_name="AdapterInstallInput")
    class InputSerializer(serializers.Serializer):
        namespace = serializers.CharField(max_length=160)
        name = serializers.CharField(max_length=200, required=False, default="")
        base_model_fingerprint = serializers.RegexField(r"^[0-9a-f]{64}$", required=False)
        adapter_config = serializers.FileField()
        adapter_model = serializers.FileField()
        memhub_adapter = serializers.FileField(required=False)

    def initialize_request(self, request: Any, *args: Any, **kwargs: Any) -> Request:
        # Before anything reads the body: file parts go straight to disk, and stop at the cap.
        request.upload_handlers = [CappedTemporaryFileUploadHandler(request, limit=conf.adapter_max_bytes())]
        return super().initialize_request(request, *args, **kwargs)

    @extend_schema(
        request=InputSerializer,
        responses={200: OpenApiTypes.OBJECT, 201: OpenApiTypes.OBJECT},
        tags=["inference"],
    )
    def post(self, request: Request) -> Response:
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        # Uploaded files on disk, handed over as file objects: the service copies them in chunks.
        files = {
            "adapter_config.json": data["adapter_config"],
            "adapter_model.safetensors": data["adapter_model"],
        }
        if data.get("memhub_adapter"):
            files["memhub_adapter.json"] = data["memhub_adapter"]
        adapter = services.adapter_install(
            subject=Subject.from_request(request, operation="inference.adapter.install"),
            namespace_key=data["namespace"],
            files=files,
            name=data["name"],
            declared_base_fingerprint=data.get("base_model_fingerprint"),
        )
        return Response(
            {
                "id": str(adapter.id),
                "namespace": adapter.namespace.key,
                "sha256": adapter.sha256,
                "rank": adapter.rank,
                "target_modules": adapter.target_modules,
                "status": adapter.status,
                "base_model": adapter.base_model.fingerprint,
            },
            status=status.HTTP_201_CREATED,
        )


class DecisionListApi(APIView):
    @extend_schema(responses={200: OpenApiTypes.OBJECT, 201: OpenApiTypes.OBJECT}, tags=["inference"])
    def get(self, request: Request, request_id: str) -> Response:
        rows = selectors.decisions_for_request(subject=Subject.from_request(request), request_id=request_id)
        return Response(
            {
                "request_id": request_id,
                "decisions": [
                    {
                        "form": d.form,
                        "action": d.action,
                        "reason": d.reason,
                        "tokens": d.tokens,
                        "score": d.score,
                        "namespace": d.namespace.key if d.namespace else None,
                        "memory_id": str(d.memory_id) if d.memory_id else None,
                        "kv_artifact": str(d.kv_artifact_id) if d.kv_artifact_id else None,
                        "adapter": str(d.adapter_id) if d.adapter_id else None,
                        "at": d.created_at.isoformat(),
                    }
                    for d in rows.select_related("namespace")
                ],
            }
        )
