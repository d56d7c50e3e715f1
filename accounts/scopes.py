"""What a request's credentials allow: a browser session holds every scope, an API token only its own.

An empty scope list grants nothing. Views that guard a whole endpoint by scope declare it
(`required_scope`, or `required_scopes` per HTTP method) and add `ScopeRequired` to their permissions;
the check runs before the view reads its input, so a refused request writes nothing.
"""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission, IsAuthenticated

from accounts.models import ALL_SCOPES
from core.errors import PermissionDenied


def request_scopes(request: Any) -> frozenset[str]:
    """The scopes of the request's credentials: an API token's own (maybe none), else all (a session)."""
    token = getattr(request, "auth", None)
    if token is None:
        return frozenset(ALL_SCOPES)
    return frozenset(getattr(token, "scopes", None) or ())


def missing_scope_error(scope: str) -> PermissionDenied:
    return PermissionDenied(f"This API token lacks the '{scope}' scope.", extra={"scope": scope})


class ScopeRequired(BasePermission):
    """Refuses (403, naming the scope) a request whose credentials lack the view's scope."""

    def has_permission(self, request: Any, view: Any) -> bool:
        per_method = getattr(view, "required_scopes", None) or {}
        scope = per_method.get(request.method, getattr(view, "required_scope", ""))
        if scope and scope not in request_scopes(request):
            raise missing_scope_error(scope)
        return True


SCOPED_PERMISSIONS = [IsAuthenticated, ScopeRequired]
