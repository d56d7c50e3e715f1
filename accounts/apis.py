"""Tenancy API: who am I, organizations and members, API tokens, namespaces."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors, services
from accounts.models import ALL_SCOPES, ApiToken, NamespaceKind, Organization, Role, TokenScope
from accounts.scopes import SCOPED_PERMISSIONS, request_scopes
from core.errors import NotFound
from core.requests import current_user
from core.serializers import InstantField, StrictSerializer, validated
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


class AccountApi(APIView):
    """Managing the account itself (tokens, organizations, members, invitations, namespaces) needs the
    `account` scope: a token made for reading memories cannot mint tokens or hand an organization away."""

    permission_classes = SCOPED_PERMISSIONS
    required_scope = TokenScope.ACCOUNT.value


class MeApi(APIView):
    class MeOutput(serializers.Serializer):
        id = serializers.UUIDField()
        username = serializers.CharField()
        email = serializers.CharField(help_text="The address on file; empty when none was given.")

    @extend_schema(responses=MeOutput, tags=["accounts"])
    def get(self, request: Request) -> Response:
        data = dict(self.MeOutput(current_user(request)).data)
        data["organizations"] = [
            {"slug": m.organization.slug, "role": m.role}
            for m in current_user(request)
            .memberships.select_related("organization")
            .order_by("organization__slug")
        ]
        data["scopes"] = sorted(request_scopes(request))
        return Response(data)


class OrganizationListCreateApi(AccountApi):
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
        data = validated(self.OrganizationListCreateInput, request.data)
        org = services.organization_create(owner=current_user(request), **data)
        return Response(self.OrganizationListCreateOutput(org).data, status=status.HTTP_201_CREATED)


def _org_for_member(user, slug: str) -> Organization:  # type: ignore[no-untyped-def]
    org = selectors.organization_list(user=user).filter(slug=slug).first()
    if org is None:
        raise NotFound("Organization not found.")
    return org


class MemberOutput(serializers.Serializer):
    username = serializers.CharField()
    role = serializers.CharField()


class MemberListSetApi(AccountApi):
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

    @extend_schema(
        request=MemberListSetInput,
        responses=MemberOutput,
        tags=["accounts"],
        description="Changes a member's role. New members join by accepting an invitation "
        "(`POST /orgs/{slug}/invitations`). The last owner cannot step down (409).",
    )
    def post(self, request: Request, slug: str) -> Response:
        org = _org_for_member(current_user(request), slug)
        data = validated(self.MemberListSetInput, request.data)
        m = services.membership_set(actor=current_user(request), org=org, **data)
        return Response({"username": m.user.username, "role": m.role}, status=status.HTTP_200_OK)


class MemberDeleteApi(AccountApi):
    @extend_schema(
        responses={204: None},
        tags=["accounts"],
        description="Admins remove members (only owners remove owners); any member may remove "
        "themselves. The last owner cannot leave (409).",
    )
    def delete(self, request: Request, slug: str, username: str) -> Response:
        org = _org_for_member(current_user(request), slug)
        services.membership_remove(actor=current_user(request), org=org, username=username)
        return Response(status=status.HTTP_204_NO_CONTENT)


class InvitationOutput(serializers.Serializer):
    id = serializers.UUIDField()
    organization = serializers.CharField(source="organization.slug")
    username = serializers.CharField(source="invitee.username")
    role = serializers.CharField()
    invited_by = serializers.CharField(source="invited_by.username", allow_null=True, default=None)
    status = serializers.CharField()
    created_at = serializers.DateTimeField()
    responded_at = serializers.DateTimeField(allow_null=True)


class OrgInvitationListCreateApi(AccountApi):
    class OrgInvitationCreateInput(StrictSerializer):
        username = serializers.CharField(max_length=150)
        role = serializers.ChoiceField(choices=Role.choices, required=False, default=Role.MEMBER)

    @extend_schema(responses=InvitationOutput(many=True), tags=["accounts"])
    def get(self, request: Request, slug: str) -> Response:
        org = _org_for_member(current_user(request), slug)
        pending = selectors.invitation_list_for_org(actor=current_user(request), organization=org)
        return Response(InvitationOutput(pending, many=True).data)

    @extend_schema(
        request=OrgInvitationCreateInput,
        responses={201: InvitationOutput},
        tags=["accounts"],
        description="Invites a user (owners and admins; only owners invite owners). The user becomes a "
        "member only when they accept.",
    )
    def post(self, request: Request, slug: str) -> Response:
        org = _org_for_member(current_user(request), slug)
        data = validated(self.OrgInvitationCreateInput, request.data)
        invitation = services.invitation_create(actor=current_user(request), org=org, **data)
        return Response(InvitationOutput(invitation).data, status=status.HTTP_201_CREATED)


class OrgInvitationRevokeApi(AccountApi):
    @extend_schema(responses={204: None}, tags=["accounts"])
    def delete(self, request: Request, slug: str, invitation_id: str) -> Response:
        org = _org_for_member(current_user(request), slug)
        services.invitation_revoke(actor=current_user(request), org=org, invitation_id=invitation_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class InvitationListApi(AccountApi):
    @extend_schema(responses=InvitationOutput(many=True), tags=["accounts"])
    def get(self, request: Request) -> Response:
        return Response(
            InvitationOutput(selectors.invitation_list_received(user=current_user(request)), many=True).data
        )


class InvitationAcceptApi(AccountApi):
    class InvitationAcceptOutput(serializers.Serializer):
        organization = serializers.CharField(source="organization.slug")
        role = serializers.CharField()

    @extend_schema(request=None, responses=InvitationAcceptOutput, tags=["accounts"])
    def post(self, request: Request, invitation_id: str) -> Response:
        m = services.invitation_accept(user=current_user(request), invitation_id=invitation_id)
        return Response(self.InvitationAcceptOutput(m).data)


class InvitationDeclineApi(AccountApi):
    @extend_schema(request=None, responses={204: None}, tags=["accounts"])
    def post(self, request: Request, invitation_id: str) -> Response:
        services.invitation_decline(user=current_user(request), invitation_id=invitation_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TokenOutput(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    prefix = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)


class TokenCreateOutput(TokenOutput):
    token = serializers.CharField(help_text="The clear token, shown only in this response.")


class TokenListCreateApi(AccountApi):
    class TokenListCreateInput(StrictSerializer):
        name = serializers.CharField(max_length=100)
        scopes = serializers.ListField(
            child=serializers.ChoiceField(choices=ALL_SCOPES), required=False, allow_empty=False
        )
        expires_at = InstantField(required=False)

    @extend_schema(responses=TokenOutput(many=True), tags=["accounts"])
    def get(self, request: Request) -> Response:
        return Response(TokenOutput(selectors.api_token_list(user=current_user(request)), many=True).data)

    @extend_schema(
        request=TokenListCreateInput,
        responses={201: TokenCreateOutput},
        tags=["accounts"],
        description="Creates a token. The clear token is in `token` and is shown only this once. Made "
        "with an API token, the new token holds only scopes the calling token holds (its scopes by "
        "default; another answers 403 naming it) and expires no later than it.",
    )
    def post(self, request: Request) -> Response:
        data = validated(self.TokenListCreateInput, request.data)
        parent = request.auth if isinstance(request.auth, ApiToken) else None
        token, raw = services.api_token_create(user=current_user(request), parent=parent, **data)
        return Response({**TokenOutput(token).data, "token": raw}, status=status.HTTP_201_CREATED)


class TokenRevokeApi(AccountApi):
    @extend_schema(
        responses={204: None},
        tags=["accounts"],
        description="Revokes the token and every token minted from it.",
    )
    def delete(self, request: Request, token_id: str) -> Response:
        services.api_token_revoke(user=current_user(request), token_id=token_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class NamespaceListCreateApi(AccountApi):
    # Listing shows what the caller may read; creating one is account management.
    required_scopes = {"GET": TokenScope.MEMORIES_READ.value}

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

    @extend_schema(
        request=NamespaceListCreateInput,
        responses={201: NamespaceOutput},
        tags=["accounts"],
        description="Creates a `shared:` namespace (yours, or an organization's you administer), or an "
        "`org:`/`publisher:` namespace `<org-slug>.<suffix>` of an organization you administer.",
    )
    def post(self, request: Request) -> Response:
        d = validated(self.NamespaceListCreateInput, request.data)
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


class NamespaceJoinOutput(serializers.Serializer):
    namespace = serializers.CharField(source="namespace.key")
    title = serializers.CharField(source="namespace.title")
    joined_at = serializers.DateTimeField(source="created_at")


class NamespaceJoinListCreateApi(AccountApi):
    class NamespaceJoinInput(StrictSerializer):
        namespace = serializers.CharField(max_length=160)

    @extend_schema(responses=NamespaceJoinOutput(many=True), tags=["accounts"])
    def get(self, request: Request) -> Response:
        return Response(
            NamespaceJoinOutput(selectors.namespace_join_list(user=current_user(request)), many=True).data
        )

    @extend_schema(
        request=NamespaceJoinInput,
        responses={201: NamespaceJoinOutput},
        tags=["accounts"],
        description="Joins a `shared:` namespace: from now on your searches, lists and chats read it. "
        "Shared namespaces you have not joined are not read on your behalf.",
    )
    def post(self, request: Request) -> Response:
        data = validated(self.NamespaceJoinInput, request.data)
        join = services.namespace_join(user=current_user(request), namespace_key=data["namespace"])
        return Response(NamespaceJoinOutput(join).data, status=status.HTTP_201_CREATED)


class NamespaceJoinDeleteApi(AccountApi):
    @extend_schema(responses={204: None}, tags=["accounts"])
    def delete(self, request: Request, key: str) -> Response:
        services.namespace_leave(user=current_user(request), namespace_key=key)
        return Response(status=status.HTTP_204_NO_CONTENT)
