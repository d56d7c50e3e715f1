"""Memory API (`/api/v1/memories...`): thin views over vault services and selectors."""

from __future__ import annotations

import hashlib
from typing import Any

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Role
from accounts.scopes import ScopeRequired
from core.errors import ApplicationError
from core.pagination import CursorlessPagination, page_parameters, paginated, paginated_response
from core.serializers import BoundedJSONField, InstantField, StrictCharField, StrictSerializer, validated
from governance import lifecycle
from governance.policy import Subject
from vault import selectors, services
from vault.filters import KNOWN_FILTERS
from vault.index import MAX_SEMANTIC_TYPE_LEN, MAX_TAG_LEN, label_problem, moment_problem
from vault.models import AclPermission, MemoryKind, MemoryState, Sensitivity


def _label(max_len: int) -> Any:
    """A validator with the index's rules for labels: one line of printable text, bounded."""

    def check(value: str) -> None:
        problem = label_problem(value, max_len)
        if problem:
            raise serializers.ValidationError(f"The value {problem}.")

    return check


def _indexable_moment(value: Any) -> None:
    """The index keeps epoch seconds from 1970 on; an earlier date could never be indexed."""
    problem = moment_problem(value) if value is not None else None
    if problem:
        raise serializers.ValidationError(f"The date {problem}.")


class MemoryFieldsInput(StrictSerializer):
    # Every value is checked with the index's own rules, so what is accepted here can be indexed.
    kind = serializers.ChoiceField(choices=MemoryKind.choices, required=False)
    text = StrictCharField(required=False, allow_blank=True, trim_whitespace=False)
    title = StrictCharField(required=False, allow_blank=True, max_length=300, validators=[_label(300)])
    tags = serializers.ListField(
        child=serializers.CharField(max_length=64, validators=[_label(min(64, MAX_TAG_LEN))]),
        required=False,
        max_length=50,
    )
    metadata = BoundedJSONField(required=False)
    source = BoundedJSONField(required=False, max_bytes=8192)  # type: ignore[assignment]
    semantic_type = serializers.CharField(
        required=False, allow_blank=True, max_length=32, validators=[_label(min(32, MAX_SEMANTIC_TYPE_LEN))]
    )
    language = serializers.CharField(required=False, allow_blank=True, max_length=16, validators=[_label(16)])
    entities = serializers.ListField(
        child=serializers.CharField(max_length=200, validators=[_label(200)]), required=False, max_length=200
    )
    valid_from = InstantField(required=False, allow_null=True, validators=[_indexable_moment])
    valid_to = InstantField(required=False, allow_null=True, validators=[_indexable_moment])
    blob_uri = serializers.CharField(
        required=False, allow_blank=True, max_length=500, validators=[_label(500)]
    )
    blob_sha256 = serializers.RegexField(r"^[0-9a-f]{64}$", required=False, allow_blank=True)
    model_fingerprint = serializers.CharField(
        required=False, allow_blank=True, max_length=128, validators=[_label(128)]
    )
    blob_meta = BoundedJSONField(required=False, max_bytes=16384)
    expires_at = InstantField(required=False, allow_null=True)
    priority = serializers.IntegerField(required=False, min_value=-100, max_value=100)
    sensitivity = serializers.ChoiceField(choices=Sensitivity.choices, required=False)
    licence = serializers.CharField(required=False, allow_blank=True, max_length=64, validators=[_label(64)])


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
        shared_with_me = serializers.BooleanField(
            required=False,
            default=False,
            help_text="Also include memories other users shared with you one by one (per-memory ACL). "
            "They are left out by default: nobody can push memory into your results without you asking.",
        )

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
        ]
        + [OpenApiParameter("shared_with_me", bool)]
        + page_parameters(),
        responses=paginated(MemoryOutput),
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
        actor = Subject.from_request(request)
        qs = selectors.memory_list(
            actor=actor,
            namespace_keys=q.get("namespace"),
            filters=filters,
            shared_with_me=q.get("shared_with_me", False),
        )
        paginator = CursorlessPagination()
        page = paginator.paginate_queryset(qs, request, view=self)
        services.memory_reads_record(actor=actor, cubes=page or [], operation="memory.list")
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
        actor = Subject.from_request(request)
        cube = selectors.memory_get(actor=actor, cube_id=cube_id)
        services.memory_reads_record(actor=actor, cubes=[cube], operation="memory.read")
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
        if raw is not None and not (raw.isascii() and raw.isdigit()):
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
        actor = Subject.from_request(request)
        versions = list(
            selectors.memory_history(actor=actor, cube_id=cube_id).select_related("parent", "cube__namespace")
        )
        if versions:
            services.memory_reads_record(
                actor=actor,
                cubes=[versions[0].cube],
                operation="memory.history",
                details={"versions": len(versions)},
            )
        return Response(VersionOutput(versions, many=True).data)


class MemoryProvenanceApi(APIView):
    @extend_schema_serializer(component_name="MemoryProvenanceOutput")
    class Output(serializers.Serializer):
        provenance_id = serializers.UUIDField()
        origin = serializers.DictField(help_text="The oldest visible copy's `source` and `namespace`.")
        memories = MemoryOutput(many=True)

    @extend_schema(responses=Output, tags=["memories"])
    def get(self, request: Request, provenance_id: str) -> Response:
        actor = Subject.from_request(request)
        cubes = selectors.memory_provenance(actor=actor, provenance_id=provenance_id)
        services.memory_reads_record(actor=actor, cubes=cubes, operation="memory.provenance")
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
        min_score = serializers.FloatField(
            required=False,
            min_value=0.0,
            max_value=1.0,
            help_text="Drop hits scoring below this (scores lie in 0..1 and compare across queries).",
        )
        shared_with_me = serializers.BooleanField(
            required=False,
            default=False,
            help_text="Also include memories other users shared with you one by one (per-memory ACL). "
            "They are left out by default: nobody can push memory into your results without you asking.",
        )

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
        refused = serializers.ListField(
            child=serializers.DictField(),
            help_text="Installed packs left out of a default search: {namespace, code, message} "
            "(licence expired, quota used up, no seat, ...).",
        )

    @extend_schema(
        request=Input,
        responses=SearchOutput,
        tags=["memories"],
        description="Hybrid search (dense + BM25, rank-fused) within the namespaces you may read.",
    )
    def post(self, request: Request) -> Response:
        d = validated(self.Input, request.data)
        actor = Subject.from_request(request)
        response = selectors.memory_search(
            actor=actor,
            query=d["query"],
            namespace_keys=d.get("namespaces"),
            filters=d.get("filters"),
            top_k=d["top_k"],
            mode=d.get("mode"),
            dense_weight=d.get("dense_weight"),
            min_score=d.get("min_score"),
            shared_with_me=d["shared_with_me"],
        )
        services.memory_reads_record(
            actor=actor,
            cubes=[r.memory for r in response.results],
            operation="memory.search",
            hit=True,
            details={"query_sha256": hashlib.sha256(d["query"].encode()).hexdigest()},
        )
        return Response(
            {
                "mode": response.mode,
                "namespaces": response.namespaces,
                "took_ms": round(response.took_ms, 2),
                "results": self.HitOutput(response.results, many=True).data,
                "refused": response.stats.get("refused", []),
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
        expires_at = InstantField(required=False, help_text="With `restore`: a new expiry.")

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


class MemoryPurgeApi(APIView):
    @extend_schema_serializer(component_name="MemoryPurgeInput")
    class Input(StrictSerializer):
        reason = serializers.CharField(required=False, allow_blank=True, max_length=300)

    @extend_schema(
        request=Input,
        responses={200: MemoryOutput},
        tags=["memories"],
        description="Right to erasure. The memory's text, title, tags, entities, metadata and source are "
        "replaced by a tombstone in every version, the memory is deleted and removed from the index, "
        "memories merged from it lose the text they quoted, and derived KV caches and adapter training "
        "records are removed. The audit log keeps a `memory.purge` entry with hashes of what was removed. "
        "Needs admin rights on the namespace (the `governance` scope). A frozen memory answers 409; so "
        "does one already purged.",
    )
    def post(self, request: Request, cube_id: str) -> Response:
        d = validated(self.Input, request.data)
        cube = services.memory_purge(
            actor=Subject.from_request(request), cube_id=cube_id, reason=d.get("reason", "")
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
            child=serializers.CharField(max_length=64, validators=[_label(min(64, MAX_TAG_LEN))]),
            required=False,
            max_length=50,
        )
        metadata = BoundedJSONField(required=False)
        semantic_type = serializers.CharField(
            required=False,
            allow_blank=True,
            max_length=32,
            validators=[_label(min(32, MAX_SEMANTIC_TYPE_LEN))],
        )
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


# --- index dead letters (staff) ------------------------------------------------------------------------


class IndexDeadLetterOutput(serializers.Serializer):
    id = serializers.IntegerField()
    cube_id = serializers.UUIDField()
    op = serializers.CharField()
    attempts = serializers.IntegerField()
    last_error = serializers.CharField()
    created_at = serializers.DateTimeField()
    last_attempt_at = serializers.DateTimeField(allow_null=True)
    dead_lettered_at = serializers.DateTimeField()


class IndexDeadLetterListApi(APIView):
    """Outbox rows the index kept refusing: what an operator fixes, then retries."""

    permission_classes = [IsAdminUser, ScopeRequired]
    required_scope = "governance"

    @extend_schema(parameters=page_parameters(), responses=paginated(IndexDeadLetterOutput), tags=["admin"])
    def get(self, request: Request) -> Response:
        return paginated_response(
            request=request, view=self, items=selectors.index_dead_letters(), serializer=IndexDeadLetterOutput
        )


class IndexDeadLetterRetryApi(APIView):
    permission_classes = [IsAdminUser, ScopeRequired]
    required_scope = "governance"

    @extend_schema_serializer(component_name="IndexDeadLetterRetryInput")
    class Input(StrictSerializer):
        ids = serializers.ListField(
            child=serializers.IntegerField(min_value=1),
            required=False,
            max_length=10_000,
            help_text="Dead letters to retry; all of them when left out.",
        )

    @extend_schema_serializer(component_name="IndexDeadLetterRetryOutput")
    class Output(serializers.Serializer):
        retried = serializers.IntegerField()

    @extend_schema(
        request=Input,
        responses=Output,
        tags=["admin"],
        description="Give dead-lettered index outbox rows a fresh set of attempts (after a fix).",
    )
    def post(self, request: Request) -> Response:
        d = validated(self.Input, request.data)
        return Response({"retried": services.index_dead_letters_retry(ids=d.get("ids"))})
