"""Tenancy API: who am I, organizations and members, API tokens, namespaces."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors, services
from accounts.models import ALL_SCOPES, NamespaceKind, Organization, Role
from core.errors import NotFound
from core.requests import current_user
from core.serializers import StrictSerializer
from governance.policy import Subject, namespace_actions
from vault.selectors import namespaces_readable


class NamespaceOutput(serializers.Serializer):
    key = serializers.CharField()
    kind = serializers.CharField()
    title = serializers.CharField()
    owner = serializers.SerializerMethodField()
    actions = serializers.SerializerMethodField()

    def get_owner(self, ns) -> str:  # type: ignore[no-untyped-def]
        return f"org:{ns.organization.slug}" if ns.organization_id else f"user:{ns.owner_user.username}"

    def get_actions(self, ns) -> list[str]:  # type: ignore[no-untyped-def]
        return sorted(a.value for a in namespace_actions(self.context["subject"], ns))


class MeApi(APIView):
    class MeOutput(serializers.Serializer):
        id = serializers.UUIDField()
        username = serializers.CharField()
        email = serializers.EmailField()

    @extend_schema(responses=MeOutput, tags=["accounts"])
    def get(self, request: Request) -> Response:
        data = dict(self.MeOutput(current_user(request)).data)
        data["organizations"] = [
            {"slug": m.organization.slug, "role": m.role}
            for m in current_user(request)
            .memberships.select_related("organization")
            .order_by("organization__slug")
        ]
        return Response(data)


class OrganizationListCreateApi(APIView):
    class OrganizationListCreateInput(StrictSerializer):
        slug = serializers.SlugField(max_length=64)
        name = serializers.CharField(max_length=200, required=False, allow_blank=True)

    class OrganizationListCreateOutput(serializers.Serializer):
        slug = serializers.CharField()
        name = serializers.CharField()

    @extend_schema(responses=OrganizationListCreateOutput(many=True), tags=["accounts"])
    def get(self, request: Request) -> Response:
        return Response(
            self.OrganizationListCreateOutput(
                selectors.organization_list(user=current_user(request)), many=True
            ).data
        )

    @extend_schema(
        request=OrganizationListCreateInput, responses={201: OrganizationListCreateOutput}, tags=["accounts"]
    )
    def post(self, request: Request) -> Response:
        s = self.OrganizationListCreateInput(data=request.data)
        s.is_valid(raise_exception=True)
        org = services.organization_create(owner=current_user(request), **s.validated_data)
        return Response(self.OrganizationListCreateOutput(org).data, status=status.HTTP_201_CREATED)


def _org_for_member(user, slug: str) -> Organization:  # type: ignore[no-untyped-def]
    org = selectors.organization_list(user=user).filter(slug=slug).first()
    if org is None:
        raise NotFound("Organization not found.")
    return org


class MemberOutput(serializers.Serializer):
    username = serializers.CharField()
    role = serializers.CharField()


class MemberListSetApi(APIView):
    class MemberListSetInput(StrictSerializer):
        username = serializers.CharField(max_length=150)
        role = serializers.ChoiceField(choices=Role.choices)

    @extend_schema(responses=MemberOutput(many=True), tags=["accounts"])
    def get(self, request: Request, slug: str) -> Response:
        org = _org_for_member(current_user(request), slug)
        return Response(
            [
                {"username": m.user.username, "role": m.role}
                for m in org.memberships.select_related("user").order_by("user__username")
            ]
        )

    @extend_schema(request=MemberListSetInput, responses=MemberOutput, tags=["accounts"])
    def post(self, request: Request, slug: str) -> Response:
        org = _org_for_member(current_user(request), slug)
        s = self.MemberListSetInput(data=request.data)
        s.is_valid(raise_exception=True)
        m = services.membership_set(actor=current_user(request), org=org, **s.validated_data)
        return Response({"username": m.user.username, "role": m.role}, status=status.HTTP_200_OK)


class MemberDeleteApi(APIView):
    @extend_schema(responses={204: None}, tags=["accounts"])
    def delete(self, request: Request, slug: str, username: str) -> Response:
        org = _org_for_member(current_user(request), slug)
        services.membership_remove(actor=current_user(request), org=org, username=username)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TokenListCreateApi(APIView):
    class TokenListCreateInput(StrictSerializer):
        name = serializers.CharField(max_length=100)
        scopes = serializers.ListField(
            child=serializers.ChoiceField(choices=ALL_SCOPES), required=False, allow_empty=False
        )
        expires_at = serializers.DateTimeField(required=False)

    class TokenListCreateOutput(serializers.Serializer):
        id = serializers.UUIDField()
        name = serializers.CharField()
        prefix = serializers.CharField()
        scopes = serializers.ListField(child=serializers.CharField())
        created_at = serializers.DateTimeField()
        last_used_at = serializers.DateTimeField()
        expires_at = serializers.DateTimeField()
        revoked_at = serializers.DateTimeField()

    @extend_schema(responses=TokenListCreateOutput(many=True), tags=["accounts"])
    def get(self, request: Request) -> Response:
        return Response(
            self.TokenListCreateOutput(selectors.api_token_list(user=current_user(request)), many=True).data
        )

    @extend_schema(
        request=TokenListCreateInput,
        responses={201: TokenListCreateOutput},
        tags=["accounts"],
        description="Creates a token. The clear token is in `token` and is shown only this once.",
    )
    def post(self, request: Request) -> Response:
        s = self.TokenListCreateInput(data=request.data)
        s.is_valid(raise_exception=True)
        token, raw = services.api_token_create(user=current_user(request), **s.validated_data)
        return Response(
            {**self.TokenListCreateOutput(token).data, "token": raw}, status=status.HTTP_201_CREATED
        )


class TokenRevokeApi(APIView):
    @extend_schema(responses={204: None}, tags=["accounts"])
    def delete(self, request: Request, token_id: str) -> Response:
        services.api_token_revoke(user=current_user(request), token_id=token_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class NamespaceListCreateApi(APIView):
    class NamespaceListCreateInput(StrictSerializer):
        kind = serializers.ChoiceField(
            choices=[NamespaceKind.SHARED, NamespaceKind.PUBLISHER, NamespaceKind.ORG]
        )
        slug = serializers.CharField(max_length=100)
        organization = serializers.SlugField(required=False)
        title = serializers.CharField(max_length=200, required=False, allow_blank=True)

    @extend_schema(responses=NamespaceOutput(many=True), tags=["accounts"])
    def get(self, request: Request) -> Response:
        subject = Subject.from_request(request)
        qs = namespaces_readable(actor=subject).select_related("organization", "owner_user")
        return Response(NamespaceOutput(qs, many=True, context={"subject": subject}).data)

    @extend_schema(request=NamespaceListCreateInput, responses={201: NamespaceOutput}, tags=["accounts"])
    def post(self, request: Request) -> Response:
        s = self.NamespaceListCreateInput(data=request.data)
        s.is_valid(raise_exception=True)
        d = s.validated_data
        ns = services.namespace_create_for(
            actor=current_user(request),
            kind=d["kind"],
            slug=d["slug"],
            organization_slug=d.get("organization"),
            title=d.get("title", ""),
        )
        return Response(
            NamespaceOutput(ns, context={"subject": Subject.from_request(request)}).data,
            status=status.HTTP_201_CREATED,
        )
