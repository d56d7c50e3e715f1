from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from core.views import healthz
from frontend.auth_views import throttled_admin_login
from mip_protocol.views import well_known

api_v1 = [
    path("", include("accounts.urls")),
    path("", include("vault.urls")),
    path("governance/", include("governance.urls")),
    path("marketplace/", include("marketplace.urls")),
    path("", include("feeds.urls")),  # feeds/... and subscriptions/...
]

urlpatterns = [
    path("admin/login/", throttled_admin_login, name="admin-login"),
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path(".well-known/mip", well_known, name="mip-well-known"),
    path("api/v1/", include((api_v1, "api"), namespace="v1")),
    path("", include("inference.urls")),  # OpenAI-compatible /v1/chat/completions
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("", include("frontend.urls")),
]

handler404 = "frontend.views.not_found"
handler500 = "core.views.server_error"
