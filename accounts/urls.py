from django.urls import path

from accounts import apis

urlpatterns = [
    path("me", apis.MeApi.as_view(), name="me"),
    path("orgs", apis.OrganizationListCreateApi.as_view(), name="orgs"),
    path("orgs/<slug:slug>/members", apis.MemberListSetApi.as_view(), name="org-members"),
    path("orgs/<slug:slug>/members/<str:username>", apis.MemberDeleteApi.as_view(), name="org-member"),
    path("orgs/<slug:slug>/invitations", apis.OrgInvitationListCreateApi.as_view(), name="org-invitations"),
    path(
        "orgs/<slug:slug>/invitations/<uuid:invitation_id>",
        apis.OrgInvitationRevokeApi.as_view(),
        name="org-invitation",
    ),
    path("invitations", apis.InvitationListApi.as_view(), name="invitations"),
    path(
        "invitations/<uuid:invitation_id>/accept",
        apis.InvitationAcceptApi.as_view(),
        name="invitation-accept",
    ),
    path(
        "invitations/<uuid:invitation_id>/decline",
        apis.InvitationDeclineApi.as_view(),
        name="invitation-decline",
    ),
    path("tokens", apis.TokenListCreateApi.as_view(), name="tokens"),
    path("tokens/<uuid:token_id>", apis.TokenRevokeApi.as_view(), name="token"),
    path("namespaces", apis.NamespaceListCreateApi.as_view(), name="namespaces"),
    path("namespaces/joined", apis.NamespaceJoinListCreateApi.as_view(), name="namespace-joins"),
    path("namespaces/joined/<str:key>", apis.NamespaceJoinDeleteApi.as_view(), name="namespace-join"),
]
