"""The SSRF guard for every URL this instance calls on a user's behalf (webhooks, MIP peers).

A user-supplied URL must not turn the server into a proxy into its own network: the cloud metadata
service (169.254.169.254), the database on 10.x, the admin port on localhost. The host is resolved and
every address it resolves to must be public; the check runs when the URL is saved and again before each
request (DNS can change between the two), and the request is pinned to an address that was checked, so a
rebinding resolver cannot answer differently the second time. Redirects are never followed (a redirect
to a private address would get around all of this).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import SplitResult, urlsplit

from django.conf import settings

from core.errors import ApplicationError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAX_URL_CHARS = 2000


def _invalid(field: str, message: str) -> ApplicationError:
    return ApplicationError(message, extra={"field": field}, status=400, code="invalid_url")


def _not_allowed(field: str, message: str) -> ApplicationError:
    return ApplicationError(message, extra={"field": field}, status=400, code="url_not_allowed")


def _parse(url: str, field: str) -> SplitResult:
    if not isinstance(url, str) or not url.strip():
        raise _invalid(field, "Enter a URL.")
    if len(url) > _MAX_URL_CHARS:
        raise _invalid(field, f"The URL is longer than {_MAX_URL_CHARS} characters.")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise _invalid(field, "The URL contains spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise _invalid(field, f"The URL is not valid: {exc}.") from None
    if parts.scheme not in ("http", "https"):
        raise _invalid(field, "Only http and https URLs can be called.")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise _invalid(field, "The URL must not carry credentials (user:password@).")
    if not parts.hostname:
        raise _invalid(field, "The URL has no host.")
    if port == 0:
        raise _invalid(field, "The URL's port is not valid.")
    return parts


def _effective(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address really reaches (IPv4-mapped, 6to4, NAT64 well-known prefix)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in ipaddress.IPv6Network("64:ff9b::/96"):
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def address_is_public(ip: IPAddress) -> bool:
    """False for private, loopback, link-local, multicast, reserved, unspecified and shared (CGNAT)
    addresses, including an IPv4 one hidden in an IPv6 address."""
    real = _effective(ip)
    for candidate in {ip, real}:
        if (
            candidate.is_private
            or candidate.is_loopback
            or candidate.is_link_local
            or candidate.is_multicast
            or candidate.is_reserved
            or candidate.is_unspecified
            or not candidate.is_global
        ):
            return False
    return True


def _resolve(host: str, port: int) -> list[IPAddress]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for info in infos:
        raw = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
        ip = ipaddress.ip_address(raw)
        if ip not in addresses:
            addresses.append(ip)
    return addresses


def outbound_addresses(url: str, *, field: str = "url") -> tuple[SplitResult, list[IPAddress]]:
    """The parsed URL and the addresses a request to it may connect to (all of them checked).

    With `MEMHUB_OUTBOUND_ALLOW_PRIVATE` the host is not resolved here and the list is empty: the caller
    connects by name. Raises a 400 `ApplicationError` naming `field` otherwise."""
    parts = _parse(url, field)
    if settings.MEMHUB_OUTBOUND_ALLOW_PRIVATE:
        return parts, []
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = _resolve(host, port)
    except (OSError, UnicodeError, ValueError):
        raise _invalid(field, f"The host {host!r} does not resolve.") from None
    if not addresses:
        raise _invalid(field, f"The host {host!r} does not resolve.")
    refused = [ip for ip in addresses if not address_is_public(ip)]
    if refused:
        raise _not_allowed(
            field,
            f"The URL resolves to {refused[0]}, a private, loopback, link-local or reserved address; "
            "this instance does not call those (MEMHUB_OUTBOUND_ALLOW_PRIVATE).",
        )
    return parts, addresses


def outbound_url_check(url: str, *, field: str = "url") -> str:
    """`url`, stripped, when this instance may call it: http(s), no credentials, and a host that
    resolves only to public addresses (unless `settings.MEMHUB_OUTBOUND_ALLOW_PRIVATE`). Otherwise a
    400: `invalid_url` for a malformed URL, `url_not_allowed` for one that points inwards."""
    url = url.strip() if isinstance(url, str) else url
    outbound_addresses(url, field=field)
    return url
