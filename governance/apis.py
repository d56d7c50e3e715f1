"""Governance API (`/api/v1/governance/...`): audit log query and export, snapshots and the time machine."""

from __future__ import annotations

from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from core.pagination import CursorlessPagination, paginated, paginated_response
from core.serializers import InstantField, StrictCharField, StrictSerializer, validated
from core.throttling import throttles
from governance import pii, selectors, timemachine, watermarking
from governance.policy import Subject


class _FormatIsAnExportChoice(DefaultContentNegotiation):
    """`?format=jsonl|csv` picks an export format on these views, not a DRF renderer."""

    def select_renderer(self, request, renderers, format_suffix=None):  # type: ignore[no-untyped-def]
        return renderers[0], renderers[0].media_type


# --- audit log -------------------------------------------------------------------------------------


class AuditEventOutput(serializers.Serializer):
    seq = serializers.IntegerField(help_text="Position in the whole log (orders entries across chains).")
    chain = serializers.CharField(help_text="The hash chain the entry belongs to: its namespace's.")
    chain_seq = serializers.IntegerField(help_text="Position in its chain, from 1, without gaps.")
    at = serializers.DateTimeField()
    actor = serializers.CharField(source="actor_label")
    operation = serializers.CharField()
    namespace = serializers.CharField(source="namespace_key")
    object_type = serializers.CharField()
    object_ids = serializers.ListField(child=serializers.CharField())
    memory_kind = serializers.CharField()
    details = serializers.JSONField()
    prev_hash = serializers.CharField()
    hash = serializers.CharField()


AUDIT_PARAMS = [
    OpenApiParameter("from", OpenApiTypes.DATETIME, description="Entries at or after this time."),
    OpenApiParameter("to", OpenApiTypes.DATETIME, description="Entries before this time."),
    OpenApiParameter("actor", str, many=True, description="Username, `remote:<instance>` or `system:<job>`."),
    OpenApiParameter(
        "operation",
        str,
        many=True,
        description="Exact (`memory.read`) or a prefix ending in `*` (`memory.*`).",
    ),
    OpenApiParameter("memory_kind", str, enum=["plaintext", "activation", "parameter"]),
    OpenApiParameter("namespace", str, description="A namespace key, e.g. `org:acme`."),
    OpenApiParameter("memory", OpenApiTypes.UUID, description="Entries that name this memory."),
    OpenApiParameter("order", str, enum=["desc", "asc"], description="By sequence number; newest first."),
    OpenApiParameter(
        "format",
        str,
        enum=["json", "jsonl", "csv"],
        description="json: a page; jsonl / csv: the whole filtered log, streamed.",
    ),
    OpenApiParameter("limit", int),
    OpenApiParameter("offset", int),
]


class AuditLogApi(APIView):
    content_negotiation_class = _FormatIsAnExportChoice

    @extend_schema_serializer(component_name="AuditLogFilterInput")
    class FilterInput(StrictSerializer):
        # `from` is a keyword: the field is renamed below.
        to = serializers.CharField(required=False)
        actor = serializers.ListField(child=serializers.CharField(max_length=200), required=False)
        operation = serializers.ListField(child=serializers.CharField(max_length=64), required=False)
        memory_kind = serializers.CharField(required=False)
        namespace = serializers.CharField(required=False, max_length=160)
        memory = serializers.UUIDField(required=False)
        order = serializers.ChoiceField(choices=["desc", "asc"], required=False)
        format = serializers.ChoiceField(choices=["json", "jsonl", "csv"], required=False)
        limit = serializers.IntegerField(required=False, min_value=1)
        offset = serializers.IntegerField(required=False, min_value=0)

        def get_fields(self):  # type: ignore[no-untyped-def]
            fields = super().get_fields()
            fields["from"] = serializers.CharField(required=False)
            return fields

    @extend_schema(
        parameters=AUDIT_PARAMS,
        tags=["governance"],
        responses={200: paginated(AuditEventOutput)},
        description="The audit log entries you may see: those of namespaces you own and, for org owners and "
        "admins, of their organization's namespaces. Needs the `governance` scope. With "
        "`format=jsonl` or `format=csv` the whole filtered log streams as a download.",
    )
    def get(self, request: Request) -> Response | StreamingHttpResponse:
        raw = {
            k: (request.query_params.getlist(k) if k in ("actor", "operation") else v)
            for k, v in request.query_params.items()
        }
        q = validated(self.FilterInput, raw)
        f = selectors.audit_filter_parse(
            since=q.get("from"),
            until=q.get("to"),
            actors=q.get("actor"),
            operations=q.get("operation"),
            memory_kind=q.get("memory_kind"),
            namespace=q.get("namespace"),
            memory=str(q["memory"]) if q.get("memory") else None,
        )
        qs = selectors.audit_list(actor=Subject.from_request(request), f=f, ascending=q.get("order") == "asc")
        fmt = q.get("format", "json")
        if fmt == "jsonl":
            response = StreamingHttpResponse(
                selectors.audit_export_jsonl(qs), content_type="application/x-ndjson"
            )
            response["Content-Disposition"] = 'attachment; filename="audit.jsonl"'
            return response
        if fmt == "csv":
            response = StreamingHttpResponse(
                selectors.audit_export_csv(qs), content_type="text/csv; charset=utf-8"
            )
            response["Content-Disposition"] = 'attachment; filename="audit.csv"'
            return response
        return paginated_response(request=request, view=self, items=qs, serializer=AuditEventOutput)


# --- snapshots and the time machine ----------------------------------------------------------------


class SnapshotOutput(serializers.Serializer):
    id = serializers.UUIDField()
    namespace = serializers.CharField(source="namespace.key")
    name = serializers.CharField()
    at = serializers.DateTimeField()
    memory_count = serializers.IntegerField()
    created_by = serializers.CharField(source="created_by.username", default=None)
    created_at = serializers.DateTimeField()


class SnapshotListCreateApi(APIView):
    @extend_schema_serializer(component_name="SnapshotListCreateInput")
    class Input(StrictSerializer):
        namespace = serializers.CharField(max_length=160)
        name = serializers.RegexField(
            r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,119}$",
            required=False,
            error_messages={"invalid": "Use letters, digits, '.', '_', ':' or '-' (at most 120)."},
        )
        at = InstantField(required=False)

    @extend_schema_serializer(component_name="SnapshotListCreateFilterInput")
    class FilterInput(StrictSerializer):
        namespace = serializers.CharField(max_length=160)
        limit = serializers.IntegerField(required=False, min_value=1)
        offset = serializers.IntegerField(required=False, min_value=0)

    @extend_schema(
        parameters=[OpenApiParameter("namespace", str, required=True)],
        responses=paginated(SnapshotOutput),
        tags=["governance"],
    )
    def get(self, request: Request) -> Response:
        q = validated(self.FilterInput, request.query_params.dict())
        qs = timemachine.snapshot_list(actor=Subject.from_request(request), namespace_key=q["namespace"])
        return paginated_response(request=request, view=self, items=qs, serializer=SnapshotOutput)

    @extend_schema(
        request=Input,
        responses={201: SnapshotOutput},
        tags=["governance"],
        description="Pin the namespace's (memory, version) pairs now, or as they were at `at`. "
        "Needs admin rights on the namespace (owner; org owner or admin).",
    )
    def post(self, request: Request) -> Response:
        d = validated(self.Input, request.data)
        snapshot = timemachine.snapshot_create(
            actor=Subject.from_request(request),
            namespace_key=d["namespace"],
            name=d.get("name", ""),
            at=d.get("at"),
        )
        return Response(SnapshotOutput(snapshot).data, status=status.HTTP_201_CREATED)


class SnapshotDetailApi(APIView):
    @extend_schema_serializer(component_name="SnapshotDetailOutput")
    class Output(SnapshotOutput):
        memories = serializers.SerializerMethodField()

        def get_memories(self, snapshot) -> list[dict]:  # type: ignore[no-untyped-def]
            return [
                {"id": str(cid), "version": v}
                for cid, v in snapshot.entries.order_by("cube_id").values_list("cube_id", "version")[:5000]
            ]

    @extend_schema(responses=Output, tags=["governance"])
    def get(self, request: Request, snapshot_id: str) -> Response:
        snapshot = timemachine.snapshot_get(actor=Subject.from_request(request), snapshot_id=snapshot_id)
        return Response(self.Output(snapshot).data)


class DiffApi(APIView):
    @extend_schema_serializer(component_name="DiffFilterInput")
    class FilterInput(StrictSerializer):
        namespace = serializers.CharField(max_length=160)
        to = serializers.CharField(required=False, max_length=64)

        def get_fields(self):  # type: ignore[no-untyped-def]
            fields = super().get_fields()
            fields["from"] = serializers.CharField(max_length=64)
            return fields

    @extend_schema_serializer(component_name="DiffOutput")
    class Output(serializers.Serializer):
        namespace = serializers.CharField()
        source = serializers.JSONField(help_text="The `from` point.")  # type: ignore[assignment]
        target = serializers.JSONField(help_text="The `to` point.")
        added = serializers.ListField(child=serializers.JSONField())
        removed = serializers.ListField(child=serializers.JSONField())
        changed = serializers.ListField(child=serializers.JSONField())
        unchanged = serializers.IntegerField()
        truncated = serializers.BooleanField()

    @extend_schema(
        parameters=[
            OpenApiParameter("namespace", str, required=True),
            OpenApiParameter(
                "from", str, required=True, description="A snapshot id, an ISO-8601 time or `now`."
            ),
            OpenApiParameter("to", str, description="A snapshot id, an ISO-8601 time or `now` (default)."),
        ],
        responses=Output,
        tags=["governance"],
        description="Memories added, removed and changed in a namespace between two points, from the version "
        "history. Needs read rights on the namespace; superseded and deleted text and titles are shown only "
        "to those who may write it (a reader gets `null` for them).",
    )
    def get(self, request: Request) -> Response:
        q = validated(self.FilterInput, request.query_params.dict())
        diff = timemachine.timemachine_diff(
            actor=Subject.from_request(request),
            namespace_key=q["namespace"],
            source=q["from"],
            target=q.get("to"),
        )
        return Response(self.Output(diff).data)


class RollbackApi(APIView):
    @extend_schema_serializer(component_name="RollbackInput")
    class Input(StrictSerializer):
        namespace = serializers.CharField(max_length=160)
        snapshot = serializers.UUIDField(required=False)
        at = InstantField(required=False)
        reason = serializers.CharField(required=False, allow_blank=True, max_length=300)
        dry_run = serializers.BooleanField(required=False, default=False)

    @extend_schema_serializer(component_name="RollbackOutput")
    class Output(serializers.Serializer):
        namespace = serializers.CharField()
        target = serializers.JSONField()
        restored = serializers.ListField(child=serializers.CharField())
        removed = serializers.ListField(child=serializers.CharField())
        unchanged = serializers.IntegerField()
        dry_run = serializers.BooleanField()

    @extend_schema(
        request=Input,
        responses={200: Output, 409: OpenApiResponse(description="A memory that would change is frozen.")},
        tags=["governance"],
        description="Make the namespace read as it did at a snapshot or time, by writing new versions "
        "(history is never rewritten). `dry_run` reports what would change. Needs write and "
        "admin rights on the namespace.",
    )
    def post(self, request: Request) -> Response:
        d = validated(self.Input, request.data)
        result = timemachine.timemachine_rollback(
            actor=Subject.from_request(request),
            namespace_key=d["namespace"],
            snapshot_id=d.get("snapshot"),
            at=d.get("at"),
            reason=d.get("reason", ""),
            dry_run=d["dry_run"],
        )
        return Response(self.Output(result).data)


# --- de-identification -----------------------------------------------------------------------------


class PiiReportOutput(serializers.Serializer):
    id = serializers.UUIDField(source="report.id")
    status = serializers.ChoiceField(
        choices=["pending", "done", "failed"],
        help_text="Scans run in the worker: `pending` until it has filled the report in.",
    )
    error = serializers.JSONField(
        source="report.report.error", default=None, help_text="A failed scan: code, message, extra."
    )
    namespace = serializers.CharField(source="report.namespace.key")
    source = serializers.CharField(source="report.source")  # type: ignore[assignment]
    mode = serializers.CharField(source="report.mode")
    threshold = serializers.FloatField(source="report.threshold")
    min_score = serializers.FloatField(source="report.min_score")
    texts_scanned = serializers.IntegerField(source="report.report.texts_scanned")
    counts = serializers.JSONField(source="report.report.counts")
    findings = serializers.ListField(
        child=serializers.JSONField(),
        help_text="Each: id, type, score, recognizer, preview (masked), text_index, "
        "start, end, memory_id (memory scans), status (open, accepted, "
        "resolved, stale).",
    )
    blocking = serializers.IntegerField(help_text="Open findings at or above the threshold.")
    publishable = serializers.BooleanField(source="ok")
    rewritten = serializers.JSONField(source="report.applied", help_text="memory id -> version written.")
    texts = serializers.ListField(
        child=serializers.CharField(),
        source="report.report.texts",
        default=None,
        allow_null=True,
        help_text="Text scans in redact / pseudonymize mode, once done: the transformed texts.",
    )
    created_by = serializers.CharField(source="report.created_by.username", default=None)
    created_at = serializers.DateTimeField(source="report.created_at")


class PiiScanApi(APIView):
    throttle_classes = throttles("pii_scan")

    @extend_schema_serializer(component_name="PiiScanInput")
    class Input(StrictSerializer):
        namespace = serializers.CharField(max_length=160)
        mode = serializers.ChoiceField(choices=pii.SCAN_MODES, required=False, default="report")
        texts = serializers.ListField(
            child=StrictCharField(allow_blank=True, trim_whitespace=False),
            required=False,
            max_length=pii.MAX_TEXTS,
        )
        memories = serializers.ListField(
            child=serializers.UUIDField(), required=False, max_length=pii.MAX_MEMORIES
        )
        threshold = serializers.FloatField(required=False, min_value=0.0, max_value=1.0)
        min_score = serializers.FloatField(required=False, min_value=0.0, max_value=1.0)

    @extend_schema(
        request=Input,
        responses={202: PiiReportOutput},
        tags=["governance"],
        description="Queue a scan of `texts` (an upload) or of the plaintext memories of `namespace` (all, "
        "or `memories`) for personal data (names and places included) and secrets. Answers 202 with the "
        "stored report, `status` `pending` until the worker has scanned (then `done` or `failed`): "
        "fetch it from `/pii/reports/{id}`. `redact` and `pseudonymize` rewrite each memory with "
        "findings as a new version (texts: the transformed texts come with the finished report). "
        "Needs write rights on the namespace.",
    )
    def post(self, request: Request) -> Response:
        d = validated(self.Input, request.data)
        report = pii.pii_scan(
            actor=Subject.from_request(request),
            namespace_key=d["namespace"],
            mode=d["mode"],
            texts=d.get("texts"),
            memory_ids=d.get("memories"),
            threshold=d.get("threshold"),
            min_score=d.get("min_score"),
        )
        return Response(PiiReportOutput(pii.pii_report_view(report)).data, status=status.HTTP_202_ACCEPTED)


class PiiReportListApi(APIView):
    @extend_schema_serializer(component_name="PiiReportListFilterInput")
    class FilterInput(StrictSerializer):
        namespace = serializers.CharField(max_length=160)
        limit = serializers.IntegerField(required=False, min_value=1)
        offset = serializers.IntegerField(required=False, min_value=0)

    @extend_schema(
        parameters=[OpenApiParameter("namespace", str, required=True)],
        responses=PiiReportOutput(many=True),
        tags=["governance"],
    )
    def get(self, request: Request) -> Response:
        q = validated(self.FilterInput, request.query_params.dict())
        qs = pii.pii_report_list(actor=Subject.from_request(request), namespace_key=q["namespace"])
        paginator = CursorlessPagination()
        page = paginator.paginate_queryset(qs, request, view=self)
        return paginator.get_paginated_response(
            PiiReportOutput([pii.pii_report_view(r) for r in page or []], many=True).data
        )


class PiiReportDetailApi(APIView):
    @extend_schema(responses=PiiReportOutput, tags=["governance"])
    def get(self, request: Request, report_id: str) -> Response:
        report = pii.pii_report_get(actor=Subject.from_request(request), report_id=report_id)
        return Response(PiiReportOutput(pii.pii_report_view(report)).data)


class PiiResolveApi(APIView):
    @extend_schema_serializer(component_name="PiiResolveInput")
    class Input(StrictSerializer):
        action = serializers.ChoiceField(choices=pii.RESOLVE_ACTIONS)
        findings = serializers.ListField(
            child=serializers.CharField(max_length=200), min_length=1, max_length=1000
        )
        reason = serializers.CharField(required=False, allow_blank=True, max_length=300)

    @extend_schema(
        request=Input,
        responses={200: PiiReportOutput},
        tags=["governance"],
        description="Resolve findings: `accept` (not personal data; recorded with who and why, valid "
        "while the memory's text is unchanged) or `redact` / `pseudonymize` those spans "
        "(a new version of each memory). Needs write rights on the namespace.",
    )
    def post(self, request: Request, report_id: str) -> Response:
        d = validated(self.Input, request.data)
        report = pii.pii_resolve(
            actor=Subject.from_request(request),
            report_id=report_id,
            action=d["action"],
            finding_ids=d["findings"],
            reason=d.get("reason", ""),
        )
        return Response(PiiReportOutput(pii.pii_report_view(report)).data)


class PiiGateApi(APIView):
    throttle_classes = throttles("pii_scan")

    @extend_schema_serializer(component_name="PiiGateInput")
    class Input(StrictSerializer):
        namespace = serializers.CharField(max_length=160)
        memories = serializers.ListField(
            child=serializers.UUIDField(), required=False, max_length=pii.MAX_MEMORIES
        )
        threshold = serializers.FloatField(required=False, min_value=0.0, max_value=1.0)

    @extend_schema(
        request=Input,
        responses={
            200: PiiReportOutput,
            202: PiiReportOutput,
            409: OpenApiResponse(
                description="`pii_unresolved`: findings block publishing; "
                "`extra.report` names the stored report. `pii_scan_failed`: the scan failed."
            ),
        },
        tags=["governance"],
        description="The publish gate, as the marketplace applies it, over the memories to publish as "
        "they are now: from completed scans of the same texts it stores the gate's report and answers "
        "200, or 409 while findings at or above the threshold are unresolved; memories not scanned yet "
        "are queued for the worker and it answers 202 with that scan's pending report (ask again when "
        "it is done).",
    )
    def post(self, request: Request) -> Response:
        d = validated(self.Input, request.data)
        view = pii.pii_gate_check(
            actor=Subject.from_request(request),
            namespace_key=d["namespace"],
            memory_ids=d.get("memories"),
            threshold=d.get("threshold"),
        )
        if view.status == "pending":
            return Response(PiiReportOutput(view).data, status=status.HTTP_202_ACCEPTED)
        if not view.ok:
            pii.pii_publish_gate_refusal(view)
        return Response(PiiReportOutput(view).data)


# --- watermark detection ---------------------------------------------------------------------------


class WatermarkDetectApi(APIView):
    throttle_classes = throttles("watermark_detect")

    @extend_schema_serializer(component_name="WatermarkDetectInput")
    class Input(StrictSerializer):
        text = StrictCharField(trim_whitespace=False, max_length=watermarking.MAX_LEAK_CHARS)
        namespaces = serializers.ListField(
            child=serializers.CharField(max_length=160),
            required=False,
            max_length=100,
            help_text="Source namespaces to attribute within (default: every one you administer).",
        )
        alpha = serializers.FloatField(
            required=False, min_value=1e-12, max_value=0.5, default=watermarking.DEFAULT_ALPHA
        )

    @extend_schema_serializer(component_name="WatermarkDetectOutput")
    class Output(serializers.Serializer):
        installation_id = serializers.CharField(
            allow_null=True,
            help_text="Set only when `adjusted_p_value` <= `alpha`: the leaking installation.",
        )
        accused = serializers.BooleanField()
        most_likely = serializers.SerializerMethodField()
        score = serializers.FloatField(
            help_text="Fraction of watermark slots agreeing with the most likely one."
        )
        matches = serializers.IntegerField()
        slots = serializers.IntegerField()
        p_value = serializers.FloatField(help_text="The most likely installation's own p-value.")
        adjusted_p_value = serializers.FloatField(
            help_text="Probability that an innocent installation scores as high "
            "(corrected for all candidates)."
        )
        alpha = serializers.FloatField()
        candidates = serializers.IntegerField()
        layers = serializers.JSONField()
        ranking = serializers.ListField(child=serializers.JSONField())

        def get_most_likely(self, att) -> dict | None:  # type: ignore[no-untyped-def]
            a = att.most_likely
            if a is None:
                return None
            return {
                "installation_id": a.watermark_id,
                "source_namespace": a.source_namespace.key,
                "installation_namespace": a.installation_namespace.key if a.installation_namespace else None,
            }

    @extend_schema(
        request=Input,
        responses={200: Output},
        tags=["governance"],
        description="Leaked text in: the most likely installation among those your namespaces "
        "published, its score, and the probability that an innocent installation "
        "scores as high. Needs admin rights on the source namespaces.",
    )
    def post(self, request: Request) -> Response:
        d = validated(self.Input, request.data)
        att = watermarking.watermark_detect(
            actor=Subject.from_request(request),
            text=d["text"],
            namespace_keys=d.get("namespaces"),
            alpha=d["alpha"],
        )
        return Response(self.Output(att).data)
