"""Sign-in with a rate limit: password guessing is limited per client address and per username."""

from __future__ import annotations

import math
from typing import Any

from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse

from core.throttling import hit


class ThrottledLoginView(auth_views.LoginView):
    template_name = "frontend/login.html"

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        username = str(request.POST.get("username", ""))[:150].lower()
        address = str(request.META.get("REMOTE_ADDR", ""))
        wait = hit(bucket="login", keys=[f"ip:{address}", f"username:{username}"])
        if wait is not None:
            response = self.render_to_response(
                {
                    **self.get_context_data(form=self.get_form()),
                    "throttled": f"Too many sign-in attempts. Try again in {math.ceil(wait)} seconds.",
                },
                status=429,
            )
            response["Retry-After"] = str(math.ceil(wait))
            return response
        return super().post(request, *args, **kwargs)
