"""Outbound webhooks, as the Standard Webhooks specification has them, so that a receiver can verify
them with any Standard Webhooks library.

Each request carries `webhook-id` (the same on every retry of a delivery, so a receiver deduplicates a
redelivery), `webhook-timestamp` (when this attempt was signed: receivers refuse stale ones, which is why
it is fresh on each attempt) and `webhook-signature` (`v1,` + base64 HMAC-SHA256 of
`{id}.{timestamp}.{body}` with the subscription's `whsec_` secret; during a rotation, signatures with
both the new and the previous secret, so receivers can switch at their own pace).

The URL passes the SSRF guard again at send time (DNS may have changed since the URL was saved), the
connection goes to an address that was checked, and redirects are never followed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.utils import timezone

from core.errors import ApplicationError
from core.outbound import outbound_addresses
from feeds.delivery.transports import Outcome

if TYPE_CHECKING:
    from feeds.models import Delivery, Subscription

SECRET_PREFIX = "whsec_"  # noqa: S105 - the prefix, not a secret
USER_AGENT = "MemHub-Webhooks/1 (+https://www.standardwebhooks.com/)"
_EXCERPT_CHARS = 500
_READ_BYTES = 4096

_client_lock = threading.Lock()
_client: tuple[int, httpx.Client] | None = None


def webhook_secret_generate() -> str:
    """A new signing secret: `whsec_` + base64 of 24 random bytes (what Standard Webhooks libraries take)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


def _secret_key(secret: str) -> bytes:
    raw = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    return base64.b64decode(raw + "=" * (-len(raw) % 4))


def webhook_signature(*, secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">` with the decoded secret."""
    signed = f"{msg_id}.{int(timestamp)}.".encode() + body
    digest = hmac.new(_secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def webhook_msg_id(delivery: Delivery) -> str:
    """Stable across retries of one delivery: a receiver that saw it already can drop a redelivery."""
    return f"msg_{delivery.pk.hex}"


def signing_secrets(subscription: Subscription, *, now: datetime | None = None) -> list[str]:
    """The secrets that sign now: the current one, and the previous one while its grace lasts."""
    now = now or timezone.now()
    found = [subscription.webhook_secret] if subscription.webhook_secret else []
    expires = subscription.webhook_previous_expires_at
    if subscription.webhook_previous_secret and expires is not None and expires > now:
        if subscription.webhook_previous_secret not in found:
            found.append(subscription.webhook_previous_secret)
    return found


def webhook_body(delivery: Delivery) -> bytes:
    """`{"type", "timestamp", "data"}`: the entry as subscribers receive it, watermarked for the
    subscription (a message that is not a feed entry carries its own payload)."""
    entry = delivery.entry
    if entry is None:
        document: Any = delivery.payload or {}
        occurred = delivery.created_at
        kind = delivery.event_type
    else:
        from feeds.render import entry_document, subscription_watermark_id

        subscription = delivery.destination.subscription
        watermark = subscription_watermark_id(subscription) if subscription is not None else ""
        document = entry_document(entry, watermark_id=watermark)
        occurred = entry.created_at
        kind = entry.kind
    message = {"type": kind, "timestamp": occurred.isoformat(), "data": document}
    return json.dumps(message, separators=(",", ":"), sort_keys=True, cls=DjangoJSONEncoder).encode()


def _http() -> httpx.Client:
    """One pooled client per process (a Celery prefork child gets its own, not its parent's sockets)."""
    global _client
    with _client_lock:
        if _client is None or _client[0] != os.getpid():
            client = httpx.Client(
                follow_redirects=False,
                trust_env=False,  # a proxy from the environment would bypass the address pinning
                headers={"User-Agent": USER_AGENT},
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            )
            _client = (os.getpid(), client)
        return _client[1]


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds from now: either delay-seconds or an HTTP date; None when absent or
    unreadable (the engine's backoff applies then)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or timezone.now())).total_seconds())


def classify(response: httpx.Response, excerpt: str = "") -> Outcome:
    """2xx delivered; 410 gone (never call again); 408/429 retry, honouring `Retry-After`; any other
    4xx is a dead letter (the receiver refused this message: retrying would not change its mind);
    5xx and anything else retry. `excerpt`: the start of the response body, for the attempt log."""
    code = response.status_code
    if 200 <= code < 300:
        return Outcome.delivered(status_code=code, response_excerpt=excerpt)
    if code == 410:
        return Outcome("gone", status_code=code, error="410 Gone", response_excerpt=excerpt)
    if code in (408, 429):
        return Outcome(
            "retry",
            status_code=code,
            error=f"HTTP {code}",
            retry_after_s=retry_after_seconds(response.headers.get("retry-after")),
            response_excerpt=excerpt,
        )
    if 400 <= code < 500:
        return Outcome("dead", status_code=code, error=f"HTTP {code}", response_excerpt=excerpt)
    if 300 <= code < 400:
        location = response.headers.get("location", "")[:200]
        error = f"HTTP {code}: redirects are not followed (Location: {location})"
        return Outcome("retry", status_code=code, error=error, response_excerpt=excerpt)
    return Outcome("retry", status_code=code, error=f"HTTP {code}", response_excerpt=excerpt)


def _request_target(url: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """The URL to connect to, extra headers and httpx extensions. Outside a private deployment the
    connection is pinned to an address the guard just checked (the Host header and TLS SNI keep the
    name, so virtual hosting and certificate checks work as with the name)."""
    parts, addresses = outbound_addresses(url, field="url")
    if not addresses:
        return url, {}, {}
    ip = addresses[0]
    literal = f"[{ip}]" if ip.version == 6 else str(ip)
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    target = parts._replace(netloc=netloc).geturl()
    host_header = parts.netloc.rsplit("@", 1)[-1]
    extensions: dict[str, Any] = {}
    if parts.scheme == "https":
        extensions["sni_hostname"] = parts.hostname
    return target, {"Host": host_header}, extensions


def webhook_send(delivery: Delivery) -> Outcome:
    """Send one delivery to its webhook. Never raises for the endpoint's failures: they are outcomes."""
    destination = delivery.destination
    subscription = destination.subscription
    url = destination.url or (subscription.webhook_url if subscription is not None else "")
    if not url:
        return Outcome("dead", error="The destination has no URL.")
    try:
        target, extra_headers, extensions = _request_target(url)
    except ApplicationError as exc:
        if exc.code == "url_not_allowed":
            return Outcome("dead", error=exc.message[:500])
        return Outcome("retry", error=exc.message[:500])  # e.g. does not resolve right now
    body = webhook_body(delivery)
    msg_id = webhook_msg_id(delivery)
    timestamp = int(time.time())
    keys = signing_secrets(subscription) if subscription is not None else []
    if not keys:
        return Outcome("dead", error="The subscription has no webhook secret.")
    signature = " ".join(
        webhook_signature(secret=key, msg_id=msg_id, timestamp=timestamp, body=body) for key in keys
    )
    headers = {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        **extra_headers,
    }
    timeout_s = float(settings.MEMHUB_DELIVERY_TIMEOUT_S)
    started = time.monotonic()
    try:
        with _http().stream(
            "POST",
            target,
            content=body,
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            extensions=extensions or None,
        ) as response:
            # Only the start of the answer is kept; a receiver that sends a huge body, or drips it
            # byte by byte, does not hold the worker past its timeout.
            head = b""
            for chunk in response.iter_bytes():
                head += chunk
                if len(head) >= _READ_BYTES or time.monotonic() - started > timeout_s:
                    break
    except httpx.HTTPError as exc:
        return Outcome("retry", error=f"{type(exc).__name__}: {exc}"[:500])
    return classify(response, head[:_READ_BYTES].decode("utf-8", errors="replace")[:_EXCERPT_CHARS])
