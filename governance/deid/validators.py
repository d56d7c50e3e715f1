"""Checksums and plausibility checks behind the recognizers.

Each check is a published rule (Luhn, ISO 13616 mod-97, SSA and HMRC allocation rules, RFC-reserved
documentation ranges), never a list of strings seen in a test set: that is what keeps look-alikes out
without tuning the recognizers to one data set.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import math
import re
from collections import Counter

# --- payment cards -----------------------------------------------------------------------------------


def luhn_ok(digits: str) -> bool:
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_network(digits: str) -> str | None:
    """The issuing network by IIN prefix and length, or None when no network issues such a number."""
    n = len(digits)
    two, three, four, six = int(digits[:2]), int(digits[:3]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4" and n in (13, 16, 19):
        return "visa"
    if (51 <= two <= 55 or 2221 <= four <= 2720) and n == 16:
        return "mastercard"
    if two in (34, 37) and n == 15:
        return "amex"
    if (four == 6011 or two == 65 or 644 <= three <= 649 or 622126 <= six <= 622925) and 16 <= n <= 19:
        return "discover"
    if 3528 <= four <= 3589 and 16 <= n <= 19:
        return "jcb"
    if (300 <= three <= 305 or two in (36, 38, 39) or four == 3095) and 14 <= n <= 19:
        return "diners"
    if two == 62 and 16 <= n <= 19:
        return "unionpay"
    if (two in (50, 56, 57, 58) or two == 63 or two == 67) and 12 <= n <= 19:
        return "maestro"
    return None


# Published test numbers (Stripe, Braintree, PayPal docs): they open no account, so they are
# documentation, not personal data.
_TEST_PANS = frozenset(
    {
        "4242424242424242",
        "4111111111111111",
        "4000056655665556",
        "5555555555554444",
        "5105105105105100",
        "378282246310005",
        "371449635398431",
        "6011111111111117",
        "3530111333300000",
        "4012888888881881",
    }
)


def is_test_card(digits: str) -> bool:
    return digits in _TEST_PANS


# --- IBAN ----------------------------------------------------------------------------------------------

# ISO 13616 registry lengths (SWIFT IBAN registry). A country code outside it cannot be an IBAN.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_ok(compact: str) -> bool:
    """Country length and ISO 7064 mod-97-10 check on an IBAN without spaces."""
    compact = compact.upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    try:
        number = int("".join(str(int(ch, 36)) for ch in rearranged))
    except ValueError:
        return False
    return number % 97 == 1


# --- national identifiers ---------------------------------------------------------------------------

# Numbers the SSA has said were never valid (advertising and wallet-insert examples).
_SSN_DOCUMENTATION = frozenset({"078051120", "219099999", "123456789"})


def ssn_ok(digits: str) -> bool:
    """SSA allocation rules: area not 000, 666 or 9xx; group not 00; serial not 0000."""
    if len(digits) != 9 or not digits.isdigit():
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return len(set(digits)) > 1


def ssn_is_documentation(digits: str) -> bool:
    return digits in _SSN_DOCUMENTATION


_NINO_BAD_PREFIXES = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})


def nino_ok(compact: str) -> bool:
    """HMRC rules: letters D F I Q U V never used; O not second; listed prefixes never issued."""
    compact = compact.upper()
    if not re.fullmatch(r"[A-Z]{2}\d{6}[A-D]", compact):
        return False
    first, second = compact[0], compact[1]
    if first in "DFIQUV" or second in "DFIQUVO":
        return False
    return compact[:2] not in _NINO_BAD_PREFIXES


# --- network addresses --------------------------------------------------------------------------------

_DOC_NETS = tuple(
    ipaddress.ip_network(n)
    for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", "3fff::/20")
)


def ip_kind(candidate: str) -> str | None:
    """`public`, `private` or `documentation`; None when not an address worth reporting.

    Loopback, unspecified and multicast addresses identify nobody, so they are not findings.
    """
    try:
        addr = ipaddress.ip_address(candidate.split("%", 1)[0])
    except ValueError:
        return None
    if addr.is_loopback or addr.is_unspecified or addr.is_multicast:
        return None
    if any(addr in net for net in _DOC_NETS):
        return "documentation"
    if addr.is_private or addr.is_link_local or addr.is_reserved:
        return "private"
    return "public"


# RFC 2606 / RFC 6761 names reserved for examples: mail to them reaches nobody.
_RESERVED_DOMAIN_RE = re.compile(
    r"(?:^|\.)(?:example\.(?:com|org|net)|[^.]+\.(?:example|test|invalid|localhost))$|^(?:example|test|invalid|localhost)$",
    re.IGNORECASE,
)

# Endings that are file extensions and not top-level domains (icon@2x.png is an asset, not a mailbox).
NOT_TLDS = frozenset(
    {
        "png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "tif", "tiff", "pdf", "txt", "json",
        "yaml", "yml", "toml", "ini", "cfg", "csv", "tsv", "js", "mjs", "ts", "tsx", "jsx", "css", "scss",
        "html", "htm", "xml", "lock", "log", "tmp", "bak", "swp", "mp3", "wav", "ogg", "mp4", "webm",
        "tar", "gz", "tgz", "bz2", "xz", "whl", "egg", "exe", "dll", "so", "dylib", "jar", "class", "pyc",
        "rb", "php", "java", "kt", "swift", "cpp", "hpp", "h", "c", "go", "rs", "vue", "svelte", "wasm",
    }
)  # fmt: skip


def email_domain_kind(domain: str) -> str | None:
    """`real`, `documentation`, or None when the domain cannot receive mail."""
    labels = domain.lower().split(".")
    if len(labels) < 2 or any(not lab or lab.startswith("-") or lab.endswith("-") for lab in labels):
        return None
    tld = labels[-1]
    if not tld.isalpha() or tld in NOT_TLDS or not 2 <= len(tld) <= 24:
        return None
    if _RESERVED_DOMAIN_RE.search(domain):
        return "documentation"
    return "real"


# --- secrets ----------------------------------------------------------------------------------------


def shannon_entropy(value: str) -> float:
    """Bits per character of the string's own character distribution."""
    if not value:
        return 0.0
    counts = Counter(value)
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


def char_classes(value: str) -> int:
    classes = 0
    classes += any(c.islower() for c in value)
    classes += any(c.isupper() for c in value)
    classes += any(c.isdigit() for c in value)
    classes += any(not c.isalnum() for c in value)
    return classes


_PLACEHOLDER_RE = re.compile(
    r"""^(?:
        <[^>]*> | \[[^\]]*\] | \{\{.*\}\} | \$\{.*\} | \$\(.*\) | %\(.*\)s | %s | \$[A-Z_][A-Z0-9_]* |
        (?:x+|\*+|\.+|\#+|0+|-+|_+|\?+)
    )$""",
    re.VERBOSE | re.IGNORECASE,
)
# Words a human writes where a secret would go in documentation or a template.
_PLACEHOLDER_WORDS = (
    "example",
    "sample",
    "placeholder",
    "redacted",
    "changeme",
    "change_me",
    "your",
    "dummy",
    "fake",
    "insert",
    "replace",
    "secret_here",
    "xxxx",
    "todo",
    "notreal",
)
# A value that is only the name of what should be there ("password: password").
_PLACEHOLDER_EXACT = frozenset(
    {
        "password",
        "passwd",
        "pass",
        "pwd",
        "secret",
        "token",
        "apikey",
        "api_key",
        "key",
        "none",
        "null",
        "true",
        "false",
        "undefined",
        "empty",
        "test",
        "admin",
        "root",
        "user",
        "username",
    }
)


def is_placeholder(value: str) -> bool:
    if _PLACEHOLDER_RE.match(value):
        return True
    lowered = value.lower()
    if lowered.strip("'\"") in _PLACEHOLDER_EXACT:
        return True
    if any(word in lowered for word in _PLACEHOLDER_WORDS):
        return True
    # A run of one repeated character (AAAA..., 1111...) is a mask, not a key.
    return len(set(value)) <= 2


_CODE_REFERENCE_RE = re.compile(
    r"^(?:os\.environ|os\.getenv|process\.env|env\(|getenv|settings\.|config\.|self\.|request\.|ENV\[)",
    re.IGNORECASE,
)


def looks_like_code_reference(value: str) -> bool:
    """`token = settings.API_TOKEN` names a secret; it does not contain one."""
    if _CODE_REFERENCE_RE.match(value) or "(" in value:
        return True
    # dotted.attribute.access or snake/camel identifiers without digits are names, not keys
    if re.fullmatch(r"[A-Za-z_][A-Za-z_]*(?:\.[A-Za-z_][A-Za-z_]*)+", value):
        return True
    return bool(re.fullmatch(r"[A-Za-z_]+", value)) and len(value) < 32


def jwt_ok(token: str) -> bool:
    """The header and payload decode to JSON objects and the header names an algorithm."""
    parts = token.split(".")
    if len(parts) != 3:
        return False
    try:
        header = json.loads(_b64url(parts[0]))
        payload = json.loads(_b64url(parts[1]))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return False
    return isinstance(header, dict) and "alg" in header and isinstance(payload, dict)


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
