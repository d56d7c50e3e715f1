from django.contrib.auth import views as auth_views
from django.urls import path

from frontend import views
from frontend.auth_views import ThrottledLoginView

urlpatterns = [
    path("", views.home, name="home"),
    path("memories/", views.memories, name="memories"),
    path("memories/<uuid:cube_id>/", views.memory_detail, name="memory-detail"),
    path("packs/", views.packs, name="packs"),
    path("marketplace/ledger/checkout/<str:session_id>", views.ledger_checkout, name="ledger-checkout"),
    path("login/", ThrottledLoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
]
