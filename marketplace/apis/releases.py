"""Marketplace API: releases (publish, read, verify, diff) and a pack's evaluation questions."""

from __future__ import annotations

from django.urls import path
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response

from core.errors import ApplicationError
from core.serializers import StrictCharField, StrictSerializer, validated
from governance.policy import Subject
from marketplace.apis.base import MarketplaceApi
from marketplace.apis.base import error_responses as errors
from marketplace.models import EvaluationQuestion, PackRelease
from marketplace.selectors import releases as selectors
from marketplace.services import releases as services

TAGS = ["marketplace"]


# --- shapes -------------------------------------------------------------------------------------------


@extend_schema_serializer(component_name="ReleaseSummaryOutput")
class ReleaseSummaryOutput(serializers.Serializer):
    """What a pack's listing shows of each release."""

    version = serializers.CharField()
    release_id = serializers.CharField(source="manifest_sha256")
    notes = serializers.CharField()
    created_at = serializers.DateTimeField()
    yanked = serializers.BooleanField()
    memories = serializers.SerializerMethodField()
    card = serializers.JSONField()

    def get_memories(self, r: PackRelease) -> int:
        return len(r.manifest.get("memories") or [])


@extend_schema_serializer(component_name="ReleaseDetailOutput")
class ReleaseDetailOutput(ReleaseSummaryOutput):
    manifest = serializers.JSONField()
    signature = serializers.CharField()
    signing_key_id = serializers.CharField()


@extend_schema_serializer(component_name="ReleaseVerifyItemsOutput")
class VerifyItemsOutput(serializers.Serializer):
    checked = serializers.IntegerField()
    ok = serializers.IntegerField()
    mismatched = serializers.ListField(child=serializers.CharField())
    missing = serializers.ListField(child=serializers.CharField())
    unlisted = serializers.ListField(child=serializers.CharField())
    erased = serializers.ListField(child=serializers.CharField())


@extend_schema_serializer(component_name="ReleaseVerifyOutput")
class VerifyOutput(serializers.Serializer):
    release_id = serializers.CharField()
    valid = serializers.BooleanField()
    manifest_sha256_ok = serializers.BooleanField()
    recomputed_sha256 = serializers.CharField(allow_blank=True)
    signature_ok = serializers.BooleanField()
    signing_key_id = serializers.CharField(allow_blank=True)
    key_known = serializers.BooleanField()
    items = VerifyItemsOutput()


@extend_schema_serializer(component_name="ReleaseDiffOutput")
class DiffOutput(serializers.Serializer):
    from_version = serializers.CharField(allow_null=True)
    to_version = serializers.CharField()
    added = serializers.ListField(child=serializers.CharField())
    changed = serializers.ListField(child=serializers.CharField())
    removed = serializers.ListField(child=serializers.CharField())
    unchanged = serializers.ListField(child=serializers.CharField())


@extend_schema_serializer(component_name="EvaluationQuestionOutput")
class QuestionOutput(serializers.Serializer):
    id = serializers.IntegerField()
    question = serializers.CharField()
    answer_provenance_ids = serializers.ListField(child=serializers.CharField())
    created_at = serializers.DateTimeField()


def _actor(request: Request, operation: str) -> Subject:
    return Subject.from_request(request, operation=operation)


# --- releases -----------------------------------------------------------------------------------------


class ReleaseListApi(MarketplaceApi):
    @extend_schema_serializer(component_name="ReleasePublishInput")
    class PublishInput(StrictSerializer):
        version = StrictCharField(max_length=40)
        notes = StrictCharField(required=False, allow_blank=True, max_length=services.MAX_NOTES_CHARS)

    @extend_schema(
        responses={200: ReleaseSummaryOutput(many=True), **errors(403, 404)},
        tags=TAGS,
        description="The pack's releases, newest version first.",
    )
    def get(self, request: Request, publisher: str, slug: str) -> Response:
        pack = selectors.release_pack_get(
            actor=_actor(request, "pack.release.list"), publisher_slug=publisher, slug=slug
        )
        return Response(ReleaseSummaryOutput(selectors.release_list(pack=pack), many=True).data)

    @extend_schema(
        request=PublishInput,
        responses={201: ReleaseDetailOutput, **errors(400, 403, 404, 409)},
        tags=TAGS,
        description=(
            "Publishes an immutable release of the pack's live items (publisher members; needs the "
            "`marketplace` and `memories:write` scopes). 400: not a semantic version, or the pack is "
            "empty. 409: `version_exists`, `version_not_increasing`, or the de-identification gate "
            "refused (`pii_unresolved` with the report id and findings, `pii_scan_pending`, "
            "`pii_scan_failed`)."
        ),
    )
    def post(self, request: Request, publisher: str, slug: str) -> Response:
        data = validated(self.PublishInput, request.data)
        actor = _actor(request, "pack.release")
        pack = selectors.release_pack_get(actor=actor, publisher_slug=publisher, slug=slug)
        release = services.release_publish(
            actor=actor, pack=pack, version=data["version"], notes=data.get("notes", "")
        )
        return Response(ReleaseDetailOutput(release).data, status=status.HTTP_201_CREATED)


class ReleaseDetailApi(MarketplaceApi):
    @extend_schema(
        responses={200: ReleaseDetailOutput, **errors(403, 404)},
        tags=TAGS,
        description="The release's canonical manifest, its Ed25519 signature and key id, and its card.",
    )
    def get(self, request: Request, publisher: str, slug: str, version: str) -> Response:
        pack = selectors.release_pack_get(
            actor=_actor(request, "pack.release.get"), publisher_slug=publisher, slug=slug
        )
        return Response(ReleaseDetailOutput(selectors.release_get(pack=pack, version=version)).data)


class ReleaseVerifyApi(MarketplaceApi):
    @extend_schema(
        responses={200: VerifyOutput, **errors(403, 404)},
        tags=TAGS,
        description=(
            "Verifies the stored release: the manifest hashes to the release id, the signature holds under "
            "the instance key, and each item's content in the vault hashes as the manifest says."
        ),
    )
    def get(self, request: Request, publisher: str, slug: str, version: str) -> Response:
        pack = selectors.release_pack_get(
            actor=_actor(request, "pack.release.verify"), publisher_slug=publisher, slug=slug
        )
        release = selectors.release_get(pack=pack, version=version)
        return Response(VerifyOutput(selectors.release_verify(release=release)).data)


class ReleaseDiffApi(MarketplaceApi):
    @extend_schema(
        parameters=[
            OpenApiParameter(
                "from", str, description="The older version (default: the release before this one)."
            )
        ],
        responses={200: DiffOutput, **errors(400, 403, 404)},
        tags=TAGS,
        description="What changes, by provenance id, from one release to another.",
    )
    def get(self, request: Request, publisher: str, slug: str, version: str) -> Response:
        pack = selectors.release_pack_get(
            actor=_actor(request, "pack.release.diff"), publisher_slug=publisher, slug=slug
        )
        new = selectors.release_get(pack=pack, version=version)
        unknown = sorted(set(request.query_params) - {"from"})
        if unknown:
            raise ApplicationError(f"Unknown query parameter '{unknown[0][:40]}'. Allowed: from.")
        from_version = request.query_params.get("from")
        if from_version is None:
            old = selectors.release_previous(release=new)
        elif from_version == version:
            raise ApplicationError("'from' must name another version than the one compared.")
        else:
            old = selectors.release_get(pack=pack, version=from_version)
        diff = services.release_diff(old=old, new=new)
        return Response(
            DiffOutput({"from_version": old.version if old else None, "to_version": new.version, **diff}).data
        )


# --- evaluation questions -----------------------------------------------------------------------------


class QuestionListApi(MarketplaceApi):
    @extend_schema_serializer(component_name="EvaluationQuestionCreateInput")
    class CreateInput(StrictSerializer):
        question = StrictCharField(max_length=services.MAX_QUESTION_CHARS)
        answer_provenance_ids = serializers.ListField(
            child=serializers.UUIDField(format="hex_verbose"), min_length=1, max_length=services.MAX_ANSWERS
        )

    @extend_schema(
        responses={200: QuestionOutput(many=True), **errors(403, 404)},
        tags=TAGS,
        description="The pack's evaluation questions (publisher members only).",
    )
    def get(self, request: Request, publisher: str, slug: str) -> Response:
        actor = _actor(request, "pack.evaluation_question.list")
        pack = selectors.release_pack_get(actor=actor, publisher_slug=publisher, slug=slug)
        questions = selectors.evaluation_question_list(actor=actor, pack=pack)
        return Response(QuestionOutput(questions, many=True).data)

    @extend_schema(
        request=CreateInput,
        responses={201: QuestionOutput, **errors(400, 403, 404)},
        tags=TAGS,
        description=(
            "Adds a question the pack answers, with the provenance ids of the memories that answer it; "
            "the next release's card reports recall@10 on these through the vault's search."
        ),
    )
    def post(self, request: Request, publisher: str, slug: str) -> Response:
        data = validated(self.CreateInput, request.data)
        actor = _actor(request, "pack.evaluation_question.create")
        pack = selectors.release_pack_get(actor=actor, publisher_slug=publisher, slug=slug)
        row = services.evaluation_question_create(
            actor=actor,
            pack=pack,
            question=data["question"],
            answer_provenance_ids=[str(a) for a in data["answer_provenance_ids"]],
        )
        return Response(QuestionOutput(row).data, status=status.HTTP_201_CREATED)


class QuestionDetailApi(MarketplaceApi):
    @extend_schema_serializer(component_name="EvaluationQuestionUpdateInput")
    class UpdateInput(StrictSerializer):
        question = StrictCharField(max_length=services.MAX_QUESTION_CHARS, required=False)
        answer_provenance_ids = serializers.ListField(
            child=serializers.UUIDField(format="hex_verbose"),
            min_length=1,
            max_length=services.MAX_ANSWERS,
            required=False,
        )

    @extend_schema(
        request=UpdateInput,
        responses={200: QuestionOutput, **errors(400, 403, 404)},
        tags=TAGS,
        description="Edits an evaluation question (publisher members only).",
    )
    def patch(self, request: Request, publisher: str, slug: str, question_id: int) -> Response:
        data = validated(self.UpdateInput, request.data)
        actor = _actor(request, "pack.evaluation_question.update")
        pack = selectors.release_pack_get(actor=actor, publisher_slug=publisher, slug=slug)
        answers = data.get("answer_provenance_ids")
        row: EvaluationQuestion = services.evaluation_question_update(
            actor=actor,
            pack=pack,
            question_id=question_id,
            question=data.get("question"),
            answer_provenance_ids=None if answers is None else [str(a) for a in answers],
        )
        return Response(QuestionOutput(row).data)

    @extend_schema(responses={204: None, **errors(403, 404)}, tags=TAGS, description="Deletes a question.")
    def delete(self, request: Request, publisher: str, slug: str, question_id: int) -> Response:
        actor = _actor(request, "pack.evaluation_question.delete")
        pack = selectors.release_pack_get(actor=actor, publisher_slug=publisher, slug=slug)
        services.evaluation_question_delete(actor=actor, pack=pack, question_id=question_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


_PACK = "packs/<slug:publisher>/<slug:slug>"

urlpatterns = [
    path(f"{_PACK}/releases", ReleaseListApi.as_view(), name="releases-list"),
    path(f"{_PACK}/releases/<str:version>", ReleaseDetailApi.as_view(), name="releases-detail"),
    path(f"{_PACK}/releases/<str:version>/verify", ReleaseVerifyApi.as_view(), name="releases-verify"),
    path(f"{_PACK}/releases/<str:version>/diff", ReleaseDiffApi.as_view(), name="releases-diff"),
    path(f"{_PACK}/evaluation-questions", QuestionListApi.as_view(), name="releases-evaluation-questions"),
    path(
        f"{_PACK}/evaluation-questions/<int:question_id>",
        QuestionDetailApi.as_view(),
        name="releases-evaluation-question",
    ),
]
