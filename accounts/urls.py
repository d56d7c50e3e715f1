from django.urls import path

from accounts import apis

urlpatterns = [
    path("me", apis.MeApi.as_view(), name="me"),
    path("orgs", apis.OrganizationListCreateApi.as_view(), name="orgs"),
    path("orgs/<slug:slug>/members", apis.MemberListSetApi.as_view(), name="org-members"),
    path("orgs/<slug:slug>/members/<str:username>", apis.MemberDeleteApi.as_view(), name="org-member"),
    path("tokens", apis.TokenListCreateApi.as_view(), name="tokens"),
    path("tokens/<uuid:token_id>", apis.TokenRevokeApi.as_view(), name="token"),
    path("namespaces", apis.NamespaceListCreateApi.as_view(), name="namespaces"),
]
