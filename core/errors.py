"""The one domain error. Services raise it; the exception handler renders it."""

from __future__ import annotations

from typing import Any


class ApplicationError(Exception):
    """A domain rule refused the request. `status` is the HTTP status the API answers with."""

    status = 400
    code = "invalid"

    def __init__(
        self,
        message: str,
        extra: dict[str, Any] | None = None,
        *,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra or {}
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code


class NotFound(ApplicationError):
    """Missing, or not visible to the caller: both answer 404 so nothing leaks across tenants."""

    status = 404
    code = "not_found"


class PermissionDenied(ApplicationError):
    status = 403
    code = "permission_denied"


class Conflict(ApplicationError):
    status = 409
    code = "conflict"
