"""Memory API (`/api/v1/memories...`): thin views over vault services and selectors."""

from __future__ import annotations

import hashlib
from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Role
from core.errors import ApplicationError
from core.pagination import CursorlessPagination
from core.serializers import BoundedJSONField, StrictCharField, StrictSerializer, validated
from governance import lifecycle
from governance.audit import audit_record
from governance.policy import Subject
from vault import selectors, services
from vault.filters import KNOWN_FILTERS
from vault.models import AclPermission, MemoryKind, MemoryState, Sensitivity


class MemoryFieldsInput(StrictSerializer):
    kind = serializers.ChoiceField(choices=MemoryKind.choices, required=False)
    text = StrictCharField(required=False, allow_blank=True, trim_whitespace=False)
    title = StrictCharField(required=False, allow_blank=True, max_length=300)
    tags = serializers.ListField(child=serializers.CharField(max_length=64), required=False, max_length=50)
    metadata = BoundedJSONField(required=False)
    source = BoundedJSONField(required=False, max_bytes=8192)  # type: ignore[assignment]
    semantic_type = serializers.CharField(required=False, allow_blank=True, max_length=32)
    language = serializers.CharField(required=False, allow_blank=True, max_length=16)
    entities = serializers.ListField(
        child=serializers.CharField(max_length=200), required=False, max_length=200
    )
    valid_from = serializers.DateTimeField(required=False, allow_null=True)
    valid_to = serializers.DateTimeField(required=False, allow_null=True)
    blob_uri = serializers.CharField(required=False, allow_blank=True, max_length=500)
    blob_sha256 = serializers.RegexField(r"^[0-9a-f]{64}$", required=False, allow_blank=True)
    model_fingerprint = serializers.CharField(required=False, allow_blank=True, max_length=128)
    blob_meta = BoundedJSONField(required=False, max_bytes=16384)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)
    priority = serializers.IntegerField(required=False, min_value=-100, max_value=100)
    sensitivity = serializers.ChoiceField(choices=Sensitivity.choices, required=False)
    licence = serializers.CharField(required=False, allow_blank=True, max_length=64)


class MemoryCreateInput(MemoryFieldsInput):
    namespace = serializers.CharField(max_length=160)
    text = StrictCharField(required=False, allow_blank=True, trim_whitespace=False)
    provenance_id = serializers.UUIDField(required=False)


class MemoryOutput(serializers.Serializer):
    id = serializers.UUIDField()
    namespace = serializers.CharField(source="namespace.key")
    version = serializers.IntegerField()
    provenance_id = serializers.UUIDField()
    content_sha256 = serializers.CharField()
    kind = serializers.CharField()
    state = serializers.CharField()
    text = serializers.CharField()
    title = serializers.CharField()
    tags = serializers.ListField(child=serializers.CharField())
    metadata = serializers.JSONField()
    source = serializers.JSONField()  # type: ignore[assignment]
    semantic_type = serializers.CharField()
    language = serializers.CharField()
    entities = serializers.ListField(child=serializers.CharField())
    valid_from = serializers.DateTimeField()
    valid_to = serializers.DateTimeField()
    blob_uri = serializers.CharField()
    blob_sha256 = serializers.CharField()
    model_fingerprint = serializers.CharField()
    blob_meta = serializers.JSONField()
    owner = serializers.CharField(source="owner.username")
    expires_at = serializers.DateTimeField()
    priority = serializers.IntegerField()
    sensitivity = serializers.CharField()
    licence = serializers.CharField()
    watermark_id = serializers.CharField()
    frozen = serializers.BooleanField()
    merged_into = serializers.UUIDField(source="merged_into_id", allow_null=True)
    acl = serializers.SerializerMethodField()
    access_count = serializers.IntegerField()
    hit_count = serializers.IntegerField()
    last_accessed_at = serializers.DateTimeField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_acl(self, cube) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
        return [{"principal": e["principal"], "permission": e["permission"]} for e in cube.acl or []]


def _audit_read(
    request: Request, cubes: list[Any], operation: str, details: dict[str, Any] | None = None
) -> None:
    by_ns: dict[Any, list[Any]] = {}
    for c in cubes:
        by_ns.setdefault(c.namespace, []).append(c)
    for ns, items in by_ns.items():
        audit_record(
            actor=Subject.from_request(request),
            operation=operation,
            namespace=ns,
            object_type="memory",
            object_ids=[str(c.id) for c in items],
            memory_kind=items[0].kind if len({c.kind for c in items}) == 1 else "",
            details=details or {},
        )


class MemoryListCreateApi(APIView):
    @extend_schema_serializer(component_name="MemoryListCreateFilterInput")
    class FilterInput(StrictSerializer):
        namespace = serializers.ListField(child=serializers.CharField(max_length=160), required=False)
        tag = serializers.ListField(child=serializers.CharField(max_length=64), required=False)
        kind = serializers.ChoiceField(choices=MemoryKind.choices, required=False)
        state = serializers.ChoiceField(choices=MemoryState.choices, required=False)
        owner = serializers.CharField(required=False)
        semantic_type = serializers.CharField(required=False)
        created_after = serializers.CharField(required=False)
        created_before = serializers.CharField(required=False)
        valid_at = serializers.CharField(required=False)
        limit = serializers.IntegerField(required=False, min_value=1)
        offset = serializers.IntegerField(required=False, min_value=0)

    @extend_schema(
        parameters=[
            OpenApiParameter(n, str, many=n in ("namespace", "tag"))
            for n in (
                "namespace",
                "tag",
                "kind",
                "state",
                "owner",
                "semantic_type",
                "created_after",
                "created_before",
                "valid_at",
            )
        ],
        responses=MemoryOutput(many=True),
        tags=["memories"],
    )
    def get(self, request: Request) -> Response:
        raw = {
            k: (request.query_params.getlist(k) if k in ("namespace", "tag") else v)
            for k, v in request.query_params.items()
        }
        q = validated(self.FilterInput, raw)
        filters: dict[str, Any] = {
            k: q[k]
            for k in (
                "kind",
                "state",
                "owner",
                "semantic_type",
                "created_after",
                "created_before",
                "valid_at",
            )
            if k in q
        }
        if q.get("tag"):
            filters["tags"] = {"all": q["tag"]}
        qs = selectors.memory_list(
            actor=Subject.from_request(request), namespace_keys=q.get("namespace"), filters=filters
        )
        paginator = CursorlessPagination()
        page = paginator.paginate_queryset(qs, request, view=self)
        _audit_read(request, page or [], "memory.list")
        return paginator.get_paginated_response(MemoryOutput(page, many=True).data)

    @extend_schema(request=MemoryCreateInput, responses={201: MemoryOutput}, tags=["memories"])
    def post(self, request: Request) -> Response:
        data = validated(MemoryCreateInput, request.data)
        cube = services.memory_create(
            actor=Subject.from_request(request), namespace_key=data.pop("namespace"), data=data
        )
        return Response(MemoryOutput(cube).data, status=status.HTTP_201_CREATED)


class MemoryBatchCreateApi(APIView):
    @extend_schema_serializer(component_name="MemoryBatchCreateInput")
    class Input(StrictSerializer):
        namespace = serializers.CharField(max_length=160)
        memories = serializers.ListField(child=serializers.DictField(), allow_empty=False)

    @extend_schema_serializer(component_name="MemoryBatchCreateItemInput")
    class ItemInput(MemoryFieldsInput):
        namespace = serializers.CharField(max_length=160, required=False)
        provenance_id = serializers.UUIDField(required=False)

    @extend_schema(
        request=Input,
        responses={201: MemoryOutput(many=True)},
        tags=["memories"],
        description="Creates up to MEMHUB_MAX_BATCH memories atomically: all or none.",
    )
    def post(self, request: Request) -> Response:
        data = validated(self.Input, request.data)
        if len(data["memories"]) > settings.VAULT_MAX_BATCH:
            raise ApplicationError(
                f"A batch takes at most {settings.VAULT_MAX_BATCH} memories.", code="too_large"
            )
        items = []
        for i, raw in enumerate(data["memories"]):
            s = self.ItemInput(data=raw)
            if not s.is_valid():
                raise serializers.ValidationError({"memories": {str(i): s.errors}})
            items.append(dict(s.validated_data))
        cubes = services.memory_create_batch(
            actor=Subject.from_request(request), namespace_key=data["namespace"], items=items
        )
        return Response(MemoryOutput(cubes, many=True).data, status=status.HTTP_201_CREATED)


class MemoryDetailApi(APIView):
    @extend_schema_serializer(component_name="MemoryDetailUpdateInput")
    class UpdateInput(MemoryFieldsInput):
        expected_version = serializers.IntegerField(min_value=1, required=False)
        mode = serializers.ChoiceField(choices=services.UPDATE_MODES, required=False)

    @extend_schema(responses=MemoryOutput, tags=["memories"])
    def get(self, request: Request, cube_id: str) -> Response:
        cube = selectors.memory_get(actor=Subject.from_request(request), cube_id=cube_id)
        services.memory_record_access(cube_ids=[cube.id])
        cube.refresh_from_db(fields=["access_count", "hit_count", "last_accessed_at"])
        _audit_read(request, [cube], "memory.read")
        return Response(MemoryOutput(cube).data)

    @extend_schema(
        request=UpdateInput,
        responses=MemoryOutput,
        tags=["memories"],
        description="Writes a new version. `expected_version` (or an `If-Match: <version>` header) "
        "is required; a stale one answers 409.",
    )
    def patch(self, request: Request, cube_id: str) -> Response:
        data = validated(self.UpdateInput, request.data)
        expected = data.pop("expected_version", None)
        if expected is None and request.headers.get("If-Match"):
            try:
                expected = int(request.headers["If-Match"].strip('"W/ '))
            except ValueError as exc:
                raise ApplicationError("If-Match must be a version number.") from exc
        mode = data.pop("mode", "overwrite")
        cube = services.memory_update(
            actor=Subject.from_request(request),
            cube_id=cube_id,
            expected_version=expected,
            data=data,
            mode=mode,
        )
        return Response(MemoryOutput(cube).data)

    @extend_schema(
        parameters=[OpenApiParameter("expected_version", int)], responses={204: None}, tags=["memories"]
    )
    def delete(self, request: Request, cube_id: str) -> Response:
        raw = request.query_params.get("expected_version")
        if raw is not None and not raw.isdigit():
            raise ApplicationError("'expected_version' must be a positive integer.")
        services.memory_delete(
            actor=Subject.from_request(request),
            cube_id=cube_id,
            expected_version=int(raw) if raw else None,
            reason=request.query_params.get("reason", "")[:300],
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class VersionOutput(serializers.Serializer):
    version = serializers.IntegerField()
    parent_version = serializers.IntegerField(source="parent.version", allow_null=True, default=None)
    operation = serializers.CharField()
    actor = serializers.CharField(source="actor.username", default=None)
    reason = serializers.CharField()
    state = serializers.CharField()
    kind = serializers.CharField()
    text = serializers.CharField()
    title = serializers.CharField()
    tags = serializers.ListField(child=serializers.CharField())
    metadata = serializers.JSONField()
    valid_from = serializers.DateTimeField()
    valid_to = serializers.DateTimeField()
    content_sha256 = serializers.CharField()
    created_at = serializers.DateTimeField()


class MemoryHistoryApi(APIView):
    @extend_schema(responses=VersionOutput(many=True), tags=["memories"])
    def get(self, request: Request, cube_id: str) -> Response:
        versions = list(
            selectors.memory_history(actor=Subject.from_request(request), cube_id=cube_id).select_related(
                "parent", "cube__namespace"
            )
        )
        if versions:
            _audit_read(request, [versions[0].cube], "memory.history", {"versions": len(versions)})
        return Response(VersionOutput(versions, many=True).data)


class MemoryProvenanceApi(APIView):
    @extend_schema(responses=MemoryOutput(many=True), tags=["memories"])
    def get(self, request: Request, provenance_id: str) -> Response:
        cubes = selectors.memory_provenance(actor=Subject.from_request(request), provenance_id=provenance_id)
        _audit_read(request, cubes, "memory.provenance")
        return Response(
            {
                "provenance_id": provenance_id,
                "origin": {"source": cubes[0].source, "namespace": cubes[0].namespace.key},
                "memories": MemoryOutput(cubes, many=True).data,
            }
        )


class MemorySearchApi(APIView):
    @extend_schema_serializer(component_name="MemorySearchInput")
    class Input(StrictSerializer):
        query = StrictCharField(max_length=2000, trim_whitespace=True)
        namespaces = serializers.ListField(
            child=serializers.CharField(max_length=160), required=False, max_length=100
        )
        filters = serializers.JSONField(required=False, help_text=f"Keys: {', '.join(KNOWN_FILTERS)}")
        top_k = serializers.IntegerField(required=False, min_value=1, default=10)
        mode = serializers.ChoiceField(choices=selectors.SEARCH_MODES, required=False)
        dense_weight = serializers.FloatField(required=False, min_value=0.0, max_value=1.0)

    @extend_schema_serializer(component_name="MemorySearchHitOutput")
    class HitOutput(serializers.Serializer):
        rank = serializers.IntegerField()
        score = serializers.FloatField()
        dense_score = serializers.FloatField(allow_null=True)
        sparse_score = serializers.FloatField(allow_null=True)
        memory = MemoryOutput()
        provenance = serializers.SerializerMethodField()

        def get_provenance(self, r) -> dict:  # type: ignore[no-untyped-def]
            m = r.memory
            return {
                "provenance_id": str(m.provenance_id),
                "version": m.version,
                "namespace": m.namespace.key,
                "content_sha256": m.content_sha256,
                "source": m.source,
            }

    @extend_schema_serializer(component_name="MemorySearchOutput")
    class SearchOutput(serializers.Serializer):
        mode = serializers.CharField()
        namespaces = serializers.ListField(child=serializers.CharField())
        took_ms = serializers.FloatField()
        results = serializers.ListField(
            child=serializers.DictField(), help_text="MemorySearchHitOutput items"
        )

    @extend_schema(
        request=Input,
        responses=SearchOutput,
        tags=["memories"],
        description="Hybrid search (dense + BM25, rank-fused) within the namespaces you may read.",
    )
    def post(self, request: Request) -> Response:
        d = validated(self.Input, request.data)
        response = selectors.memory_search(
            actor=Subject.from_request(request),
            query=d["query"],
            namespace_keys=d.get("namespaces"),
            filters=d.get("filters"),
            top_k=d["top_k"],
            mode=d.get("mode"),
            dense_weight=d.get("dense_weight"),
        )
        cubes = [r.memory for r in response.results]
        services.memory_record_access(cube_ids=[c.id for c in cubes], hit=True)
        _audit_read(
            request, cubes, "memory.search", {"query_sha256": hashlib.sha256(d["query"].encode()).hexdigest()}
        )
        return Response(
            {
                "mode": response.mode,
                "namespaces": response.namespaces,
                "took_ms": round(response.took_ms, 2),
                "results": self.HitOutput(response.results, many=True).data,
            }
        )


# --- per-memory ACL, lifecycle, merge ------------------------------------------------------------------


class AclEntryOutput(serializers.Serializer):
    principal = serializers.CharField(help_text="`user:<username>` or `org:<slug>:<minimum role>`.")
    permission = serializers.CharField()


class MemoryAclApi(APIView):
    @extend_schema_serializer(component_name="MemoryAclGrantInput")
    class GrantInput(StrictSerializer):
        user = serializers.CharField(required=False, max_length=150)
        org = serializers.SlugField(required=False, max_length=64)
        role = serializers.ChoiceField(
            choices=Role.choices,
            required=False,
            help_text="With `org`: the least role covered (default member).",
        )
        permission = serializers.ChoiceField(choices=AclPermission.choices)

    @extend_schema_serializer(component_name="MemoryAclRevokeInput")
    class RevokeInput(StrictSerializer):
        user = serializers.CharField(required=False, max_length=150)
        org = serializers.SlugField(required=False, max_length=64)
        role = serializers.ChoiceField(choices=Role.choices, required=False)

    @extend_schema(responses=AclEntryOutput(many=True), tags=["memories"])
    def get(self, request: Request, cube_id: str) -> Response:
        cube = selectors.memory_get(actor=Subject.from_request(request), cube_id=cube_id)
        return Response(AclEntryOutput(cube.acl, many=True).data)

    @extend_schema(
        request=GrantInput,
        responses={201: AclEntryOutput(many=True)},
        tags=["memories"],
        description="Share this one memory with a user, or with an organization's members from a "
        "role up, read-only or read-write. Needs admin rights on its namespace.",
    )
    def post(self, request: Request, cube_id: str) -> Response:
        d = validated(self.GrantInput, request.data)
        cube = services.memory_acl_grant(
            actor=Subject.from_request(request),
            cube_id=cube_id,
            permission=d["permission"],
            username=d.get("user"),
            org_slug=d.get("org"),
            role=d.get("role"),
        )
        return Response(AclEntryOutput(cube.acl, many=True).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[
            OpenApiParameter("user", str),
            OpenApiParameter("org", str),
            OpenApiParameter("role", str),
        ],
        responses={204: None},
        tags=["memories"],
    )
    def delete(self, request: Request, cube_id: str) -> Response:
        d = validated(self.RevokeInput, request.query_params.dict())
        services.memory_acl_revoke(
            actor=Subject.from_request(request),
            cube_id=cube_id,
            username=d.get("user"),
            org_slug=d.get("org"),
            role=d.get("role"),
        )
        return Response(status=status.HTTP_204_NO_CONTENT)


class MemoryLifecycleApi(APIView):
    @extend_schema_serializer(component_name="MemoryLifecycleInput")
    class Input(StrictSerializer):
        action = serializers.ChoiceField(choices=lifecycle.LIFECYCLE_ACTIONS)
        expected_version = serializers.IntegerField(min_value=1, required=False)
        reason = serializers.CharField(required=False, allow_blank=True, max_length=300)
        expires_at = serializers.DateTimeField(required=False, help_text="With `restore`: a new expiry.")

    @extend_schema(
        request=Input,
        responses={200: MemoryOutput},
        tags=["memories"],
        description="activate (generated -> activated), archive (leaves the hot index), restore "
        "(archived/expired/merged -> activated, back in the index), expire, freeze, "
        "unfreeze. A frozen memory or a transition its state does not allow answers "
        "409. Needs admin rights on the namespace.",
    )
    def post(self, request: Request, cube_id: str) -> Response:
        d = validated(self.Input, request.data)
        cube = lifecycle.memory_transition(
            actor=Subject.from_request(request),
            cube_id=cube_id,
            action=d["action"],
            expected_version=d.get("expected_version"),
            reason=d.get("reason", ""),
            expires_at=d.get("expires_at"),
        )
        return Response(MemoryOutput(cube).data)


class MemoryMergeApi(APIView):
    @extend_schema_serializer(component_name="MemoryMergeInput")
    class Input(StrictSerializer):
        sources = serializers.ListField(
            child=serializers.UUIDField(), min_length=2, max_length=lifecycle.MAX_MERGE_SOURCES
        )
        text = StrictCharField(required=False, allow_blank=False, trim_whitespace=False)
        title = StrictCharField(required=False, allow_blank=True, max_length=300)
        tags = serializers.ListField(
            child=serializers.CharField(max_length=64), required=False, max_length=50
        )
        metadata = BoundedJSONField(required=False)
        semantic_type = serializers.CharField(required=False, allow_blank=True, max_length=32)
        reason = serializers.CharField(required=False, allow_blank=True, max_length=300)

    @extend_schema(
        request=Input,
        responses={201: MemoryOutput},
        tags=["memories"],
        description="Merge live plaintext memories of one namespace into a new memory; the sources "
        "become `merged` (with `merged_into`) and leave the hot index.",
    )
    def post(self, request: Request) -> Response:
        d = validated(self.Input, request.data)
        sources, reason = d.pop("sources"), d.pop("reason", "")
        cube = lifecycle.memory_merge(
            actor=Subject.from_request(request), source_ids=sources, data=d, reason=reason
        )
        return Response(MemoryOutput(cube).data, status=status.HTTP_201_CREATED)
