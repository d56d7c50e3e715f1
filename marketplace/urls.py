from django.urls import path

from marketplace import apis

urlpatterns = [
    path("packs", apis.PackCatalogApi.as_view(), name="packs"),
    path("packs/<slug:publisher>/<slug:slug>", apis.PackDetailApi.as_view(), name="pack"),
    path("packs/<slug:publisher>/<slug:slug>/install", apis.PackInstallApi.as_view(), name="pack-install"),
    path("installations", apis.InstallationListApi.as_view(), name="installations"),
]
