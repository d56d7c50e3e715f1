"""The SSRF guard: a URL this instance would call on a user's behalf must not point into its own network
(unless the instance says it may: MEMHUB_OUTBOUND_ALLOW_PRIVATE)."""

from __future__ import annotations

import pytest

from core.errors import ApplicationError
from core.outbound import outbound_url_check

INWARD = [
    "http://10.0.0.5/hook",
    "http://10.255.255.255:8080/hook",
    "http://169.254.169.254/latest/meta-data/",  # the cloud metadata service
    "http://127.0.0.1/hook",
    "http://127.1/hook",  # shorthand for 127.0.0.1
    "http://2130706433/hook",  # 127.0.0.1 as one number
    "http://0x7f000001/hook",
    "http://localhost:8000/hook",  # a name that resolves to loopback
    "http://192.168.1.20/hook",
    "http://172.16.0.1/hook",
    "http://100.64.0.1/hook",  # shared address space (carrier-grade NAT)
    "http://0.0.0.0/hook",
    "http://224.0.0.1/hook",  # multicast
    "http://240.0.0.1/hook",  # reserved
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",  # IPv4-mapped loopback
    "http://[::ffff:a9fe:a9fe]/hook",  # IPv4-mapped 169.254.169.254
    "http://[::]/hook",
    "http://[fc00::1]/hook",  # unique local
    "http://[fe80::1]/hook",  # link-local
    "http://[ff02::1]/hook",  # multicast
    "http://[2002:7f00:1::]/hook",  # 6to4 wrapping 127.0.0.1
    "https://[64:ff9b::a00:1]/hook",  # NAT64 wrapping 10.0.0.1
]

MALFORMED = [
    ("ftp://example.com/file", "http and https"),
    ("file:///etc/passwd", "http and https"),
    ("gopher://example.com/", "http and https"),
    ("http://user:secret@93.184.216.34/hook", "credentials"),
    ("http://user@93.184.216.34/hook", "credentials"),
    ("http:///hook", "no host"),
    ("not a url", "spaces"),
    ("", "Enter a URL"),
    ("http://93.184.216.34:99999/hook", "not valid"),
    ("http://93.184.216.34/ho\nok", "control"),
]


@pytest.fixture
def guarded(settings):  # type: ignore[no-untyped-def]
    settings.MEMHUB_OUTBOUND_ALLOW_PRIVATE = False
    return settings


@pytest.mark.parametrize("url", INWARD)
def test_an_address_inside_the_network_is_refused_naming_the_field(guarded, url: str) -> None:
    with pytest.raises(ApplicationError) as caught:
        outbound_url_check(url, field="webhook_url")
    error = caught.value
    assert (error.status, error.code) == (400, "url_not_allowed")
    assert error.extra == {"field": "webhook_url"}
    assert "MEMHUB_OUTBOUND_ALLOW_PRIVATE" in error.message


@pytest.mark.parametrize(("url", "says"), MALFORMED)
def test_a_malformed_url_is_refused_as_invalid(guarded, url: str, says: str) -> None:
    with pytest.raises(ApplicationError) as caught:
        outbound_url_check(url, field="webhook_url")
    error = caught.value
    assert (error.status, error.code) == (400, "invalid_url")
    assert says in error.message
    assert error.extra == {"field": "webhook_url"}


def test_a_host_that_does_not_resolve_is_refused(guarded) -> None:
    with pytest.raises(ApplicationError) as caught:
        outbound_url_check("https://no-such-host.invalid/hook")
    assert caught.value.code == "invalid_url"
    assert "does not resolve" in caught.value.message
    assert caught.value.extra == {"field": "url"}


@pytest.mark.parametrize(
    "url",
    ["https://93.184.216.34/hook", "http://8.8.8.8:8080/x?y=1", "https://[2606:4700:4700::1111]/hook"],
)
def test_a_public_address_is_allowed(guarded, url: str) -> None:
    assert outbound_url_check(f"  {url} ") == url


def test_the_instance_setting_allows_private_addresses(settings) -> None:
    settings.MEMHUB_OUTBOUND_ALLOW_PRIVATE = True
    assert outbound_url_check("http://127.0.0.1:9/hook") == "http://127.0.0.1:9/hook"
    assert outbound_url_check("http://localhost/hook") == "http://localhost/hook"
    # Still only http(s), and still no credentials.
    with pytest.raises(ApplicationError) as caught:
        outbound_url_check("file:///etc/passwd")
    assert caught.value.code == "invalid_url"
    with pytest.raises(ApplicationError):
        outbound_url_check("http://admin:pw@127.0.0.1/")
