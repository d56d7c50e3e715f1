"""Sign-in with a rate limit: password guessing is limited per client address and per username."""

from __future__ import annotations

import math
from typing import Any

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse

from core.throttling import hit


def login_throttle_wait(request: HttpRequest) -> float | None:
    """Count a sign-in attempt; seconds to wait if this address or this username is over the limit."""
    username = str(request.POST.get("username", ""))[:150].lower()
    address = str(request.META.get("REMOTE_ADDR", ""))
    return hit(bucket="login", keys=[f"ip:{address}", f"username:{username}"])


def _retry_after(wait: float) -> str:
    return str(math.ceil(wait))


def throttled_admin_login(request: HttpRequest, **kwargs: Any) -> HttpResponse:
    """The admin site's sign-in, under the same limit as the site's own."""
    if request.method == "POST":
        wait = login_throttle_wait(request)
        if wait is not None:
            response = HttpResponse(
                f"Too many sign-in attempts. Try again in {_retry_after(wait)} seconds.",
                status=429,
                content_type="text/plain",
            )
            response["Retry-After"] = _retry_after(wait)
            return response
    return admin.site.login(request, **kwargs)


class ThrottledLoginView(auth_views.LoginView):
    template_name = "frontend/login.html"

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        wait = login_throttle_wait(request)
        if wait is not None:
            response = self.render_to_response(
                {
                    **self.get_context_data(form=self.get_form()),
                    "throttled": f"Too many sign-in attempts. Try again in {_retry_after(wait)} seconds.",
                },
                status=429,
            )
            response["Retry-After"] = _retry_after(wait)
            return response
        return super().post(request, *args, **kwargs)
