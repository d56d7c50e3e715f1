"""One JSON error shape for every error the API returns.

{"error": {"code": "...", "message": "...", "fields": {...}, "extra": {...}}}
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import connections
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.serializers import as_serializer_error
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from core.errors import ApplicationError
from core.errors import NotFound as AppNotFound
from core.errors import PermissionDenied as AppPermissionDenied

logger = logging.getLogger("core.exceptions")

E = TypeVar("E", bound=BaseException)
DeniedListener = Callable[..., None]  # (*, request, error, status) -> None
_denied_listeners: list[DeniedListener] = []
DENIALS = (
    AppNotFound,
    AppPermissionDenied,
    drf_exceptions.NotFound,
    drf_exceptions.PermissionDenied,
    Http404,
    DjangoPermissionDenied,
)


def _first_message(detail: Any) -> str:
    if isinstance(detail, dict):
        for key, value in detail.items():
            msg = _first_message(value)
            return msg if key in ("non_field_errors", "detail") else f"{key}: {msg}"
    if isinstance(detail, list) and detail:
        return _first_message(detail[0])
    return str(detail)


def error_body(code: str, message: str, *, fields: Any = None, extra: dict[str, Any] | None = None) -> dict:
    body: dict[str, Any] = {"code": code, "message": message}
    if fields:
        body["fields"] = fields
    if extra:
        body["extra"] = extra
    return {"error": body}


# --- refused requests (audited by governance, which registers a listener) ---------------------------


@dataclass(frozen=True)
class DeniedTarget:
    """What a refused request was after. Never shown to the caller; it tells the audit whose log the
    attempt belongs in."""

    namespace: Any = None
    object_type: str = ""
    object_ids: tuple[str, ...] = ()


def deny_target(
    error: E, *, namespace: Any = None, object_type: str = "", object_ids: Iterable[Any] = ()
) -> E:
    """Attach the refused request's target to a NotFound / PermissionDenied about to be raised:
    `raise deny_target(NotFound("Memory not found."), namespace=cube.namespace, ...)`. The response is
    unchanged (a 404 stays a 404); the `access.denied` audit entry lands in that namespace's log."""
    error.denied_target = DeniedTarget(  # type: ignore[attr-defined]
        namespace=namespace, object_type=object_type, object_ids=tuple(str(i) for i in object_ids)
    )
    return error


def denied_target(error: BaseException) -> DeniedTarget | None:
    target = getattr(error, "denied_target", None)
    return target if isinstance(target, DeniedTarget) else None


def register_denied_listener(fn: DeniedListener) -> None:
    """Call `fn(request=, error=, status=)` for every request of an authenticated caller refused with
    403 or 404, after the request's own transaction has been rolled back. Listeners must not raise."""
    if fn not in _denied_listeners:
        _denied_listeners.append(fn)


def _notify_denied(error: Exception, context: dict, response: Response) -> None:
    request = context.get("request")
    user = getattr(request, "user", None)
    if not _denied_listeners or request is None or not getattr(user, "is_authenticated", False):
        return

    def fire() -> None:
        for fn in list(_denied_listeners):
            try:
                fn(request=request, error=error, status=response.status_code)
            except Exception:  # an audit failure must not turn a 404 into a 500
                logger.exception("recording a refused request failed")

    if any(c.settings_dict.get("ATOMIC_REQUESTS") and c.in_atomic_block for c in connections.all()):
        # The view runs inside the request's transaction, which rolls back when the view returns:
        # record once the response is closed, after that rollback (Django closes responses itself).
        response._resource_closers.append(fire)  # type: ignore[attr-defined]
    else:
        fire()  # whatever the refused service wrote has already been rolled back


def exception_handler(exc: Exception, context: dict) -> Response | None:
    response = _render(exc, context)
    if response is not None and isinstance(exc, DENIALS) and response.status_code in (403, 404):
        _notify_denied(exc, context, response)
    return response


def _render(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, ApplicationError):
        set_rollback()  # as DRF does for its own errors: a refused request writes nothing
        return Response(error_body(exc.code, exc.message, extra=exc.extra), status=exc.status)
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return Response(
            error_body(
                "request_too_large",
                f"The request body exceeds the limit of {limit} bytes for non-file data.",
                extra={"limit_bytes": limit},
            ),
            status=413,
        )
    if isinstance(exc, DjangoValidationError):
        exc = drf_exceptions.ValidationError(as_serializer_error(exc))
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    if isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, drf_exceptions.ValidationError):
        response.data = error_body("invalid", _first_message(exc.detail), fields=exc.detail)
    elif isinstance(exc, drf_exceptions.APIException):
        detail = exc.detail
        code = exc.get_codes() if not isinstance(exc.get_codes(), (dict, list)) else exc.default_code
        response.data = error_body(str(code), _first_message(detail))
    return response


def json_error(status: int, code: str, message: str) -> JsonResponse:
    """For plain Django views (404/500 handlers) so they answer in the same shape."""
    return JsonResponse(error_body(code, message), status=status)
