from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from accounts.models import User


def current_user(request: Any) -> User:
    """The authenticated user of a request whose view requires authentication (DRF IsAuthenticated or
    login_required ran before the view body)."""
    return cast("User", request.user)
