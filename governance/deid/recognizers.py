"""Presidio recognizers for personal data and secrets.

Each recognizer is a Presidio `LocalRecognizer`, so it runs inside Presidio's `AnalyzerEngine` (registry,
thresholds, allow-lists, de-duplication) on a blank spaCy pipeline. Presidio's own `PatternRecognizer`
only lets a validator see the matched string; ours also see the surrounding text (context words such as
"phone" or "SSN") and choose the reported span (the value of `api_key=...`, not the key name), which is
why they implement `analyze` directly.

Scores: 0.9 and above for checksummed or structurally certain matches, 0.6-0.85 for well-formed matches
without a checksum, 0.1 for documentation values (RFC-reserved domains and address ranges, published
test card numbers, the AWS example key): those are reported only when a caller asks for low scores.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import phonenumbers
from presidio_analyzer import LocalRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts

from governance.deid import validators as v
from governance.deid.types import EntityType

DOCUMENTATION_SCORE = 0.1


def _context(
    text: str, start: int, end: int, words: tuple[str, ...], before: int = 48, after: int = 16
) -> bool:
    """Whether any context word appears shortly before (or just after) the match."""
    window = text[max(0, start - before) : start].lower() + " " + text[end : end + after].lower()
    return any(re.search(rf"(?<![a-z]){re.escape(w)}(?![a-z])", window) for w in words)


class RegexRecognizer(LocalRecognizer):
    """A recognizer defined by one compiled regex and an `evaluate` hook returning a score or None."""

    ENTITY: str = ""
    NAME: str = ""
    PATTERN: re.Pattern[str]
    GROUP: int | str = 0

    def __init__(self) -> None:
        super().__init__(supported_entities=[self.ENTITY], name=self.NAME, supported_language="en")

    def load(self) -> None:  # patterns are compiled at import time
        return None

    def evaluate(self, match: re.Match[str], text: str) -> float | None:
        raise NotImplementedError

    def spans(self, match: re.Match[str]) -> tuple[int, int]:
        return match.span(self.GROUP)

    def find(self, text: str) -> Iterator[tuple[int, int, float]]:
        for match in self.PATTERN.finditer(text):
            score = self.evaluate(match, text)
            if score is not None and score > 0:
                start, end = self.spans(match)
                yield start, end, score

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        return [_result(self, self.ENTITY, start, end, score) for start, end, score in self.find(text)]


def _result(recognizer: LocalRecognizer, entity: str, start: int, end: int, score: float) -> RecognizerResult:
    name: str = recognizer.name  # type: ignore[has-type]  # presidio assigns it untyped in __init__
    return RecognizerResult(
        entity_type=entity,
        start=start,
        end=end,
        score=score,
        recognition_metadata={
            RecognizerResult.RECOGNIZER_NAME_KEY: name,
            RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: recognizer.id,
        },
    )


# --- personal data ------------------------------------------------------------------------------------


class EmailRecognizer(RegexRecognizer):
    ENTITY, NAME = EntityType.EMAIL, "email"
    PATTERN = re.compile(
        r"(?<![\w.%+-])([A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?)"
        r"@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24})(?![\w-]|\.[A-Za-z0-9])"
    )

    def evaluate(self, match: re.Match[str], text: str) -> float | None:
        local, domain = match.group(1), match.group(2)
        if ".." in local:
            return None
        if re.match(r":[^\s]", text[match.end() : match.end() + 2]):
            return None  # git@github.com:org/repo.git is an SSH remote, not a mailbox
        if text[max(0, match.start() - 3) : match.start()] == "://":
            return None  # https://deploy@github.com/... is URL userinfo, not a mailbox
        kind = v.email_domain_kind(domain)
        if kind is None:
            return None
        return DOCUMENTATION_SCORE if kind == "documentation" else 0.9


class PhoneRecognizer(LocalRecognizer):
    """libphonenumber's matcher finds and validates numbers; we then require that the text *looks*
    like a phone number (international prefix, a national grouping, or a context word), because
    the matcher alone also accepts bare digit runs such as order and reference numbers."""

    CONTEXT = (
        "phone",
        "tel",
        "telephone",
        "call",
        "mobile",
        "cell",
        "fax",
        "whatsapp",
        "sms",
        "text me",
        "ring",
        "contact",
        "reach",
        "dial",
    )
    REGIONS = ("US", "GB")

    def __init__(self) -> None:
        super().__init__(supported_entities=[EntityType.PHONE], name="phone", supported_language="en")

    def load(self) -> None:
        return None

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        found: dict[tuple[int, int], float] = {}
        for region in self.REGIONS:
            for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
                score = self._score(m.raw_string, region, text, m.start, m.end)
                if score is not None:
                    key = (m.start, m.end)
                    found[key] = max(score, found.get(key, 0.0))
        return [_result(self, EntityType.PHONE, s, e, score) for (s, e), score in found.items()]

    def _score(self, raw: str, region: str, text: str, start: int, end: int) -> float | None:
        # A neighbouring letter or digit-dot means the number is part of a code or a version string.
        before = text[start - 1] if start else " "
        after = text[end] if end < len(text) else " "
        if before.isalnum() or before in "-_/#" or after.isalnum() or after in "-_/":
            return None
        context = _context(text, start, end, self.CONTEXT)
        groups = re.findall(r"\d+", raw)
        if raw.startswith(("+", "00")):
            score = 0.8
        elif len(groups) == 1:
            # A bare digit run is a phone number only when the text says so.
            return 0.6 if context else None
        elif region == "US" and [len(g) for g in groups] in ([3, 3, 4], [1, 3, 3, 4]):
            score = 0.7
        elif region == "GB" and groups[0].startswith("0") and 2 <= len(groups) <= 3:
            score = 0.7
        else:
            return None
        return min(0.95, score + 0.15) if context else score


class CreditCardRecognizer(RegexRecognizer):
    ENTITY, NAME = EntityType.CREDIT_CARD, "credit_card"
    # 13-19 digits, contiguous or in the groupings printed on cards (4-4-4-4[-3], Amex 4-6-5).
    PATTERN = re.compile(
        r"(?<![\w.,-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?|\d{4}([ -])\d{6}\2\d{4,5})"
        r"(?![\w-]|[.,]\d)"
    )
    CONTEXT = ("card", "visa", "mastercard", "amex", "credit", "debit", "pan", "cc")

    def evaluate(self, match: re.Match[str], text: str) -> float | None:
        digits = re.sub(r"\D", "", match.group(0))
        if not 13 <= len(digits) <= 19 or not v.luhn_ok(digits) or v.card_network(digits) is None:
            return None
        if v.is_test_card(digits):
            return DOCUMENTATION_SCORE
        # Luhn passes for one random digit string in ten; grouping or a context word is extra evidence.
        grouped = not match.group(0).isdigit()
        context = _context(match.string, match.start(), match.end(), self.CONTEXT)
        return 0.95 if (grouped or context) else 0.8


class IbanRecognizer(RegexRecognizer):
    ENTITY, NAME = EntityType.IBAN, "iban"
    PATTERN = re.compile(
        r"(?<![A-Za-z0-9])([A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?)(?![A-Za-z0-9])"
    )

    def evaluate(self, match: re.Match[str], text: str) -> float | None:
        return 1.0 if v.iban_ok(match.group(1).replace(" ", "")) else None

    def find(self, text: str) -> Iterator[tuple[int, int, float]]:
        for match in self.PATTERN.finditer(text):
            value = match.group(1)
            # The greedy tail may have swallowed a following group of digits; retry shorter prefixes.
            while value:
                if v.iban_ok(value.replace(" ", "")):
                    yield match.start(1), match.start(1) + len(value), 1.0
                    break
                cut = value.rfind(" ")
                value = value[:cut] if cut > 4 else ""


class Ipv4Recognizer(RegexRecognizer):
    ENTITY, NAME = EntityType.IP_ADDRESS, "ipv4"
    # Not inside a longer dotted sequence (OIDs, four-part version strings with a fifth part).
    PATTERN = re.compile(r"(?<![\w.])((?:\d{1,3}\.){3}\d{1,3})(?!\.?\d|\.\w)(?:/\d{1,2})?")
    GROUP = 1

    def evaluate(self, match: re.Match[str], text: str) -> float | None:
        if any(len(p) > 1 and p.startswith("0") for p in match.group(1).split(".")):
            return None  # 01.02.2023 is a date, not an address
        kind = v.ip_kind(match.group(1))
        return {"public": 0.8, "private": 0.6, "documentation": DOCUMENTATION_SCORE}.get(kind or "")


class Ipv6Recognizer(RegexRecognizer):
    ENTITY, NAME = EntityType.IP_ADDRESS, "ipv6"
    # A loose candidate (hex groups and colons, optional embedded IPv4 and zone); `ipaddress` decides.
    PATTERN = re.compile(
        r"(?<![\w:.%])([0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?:(?<=:)\d{1,3}(?:\.\d{1,3}){3})?)"
        r"(?:%[\w.]+)?(?![\w:])"
    )

    def evaluate(self, match: re.Match[str], text: str) -> float | None:
        value = match.group(0)
        # At least three groups: `a::b` in code (`std::map`, `dead::beef`) is not an address.
        if value.count(":") < 3 and not value.startswith("::"):
            return None
        kind = v.ip_kind(value)
        return {"public": 0.8, "private": 0.6, "documentation": DOCUMENTATION_SCORE}.get(kind or "")


class UsSsnRecognizer(RegexRecognizer):
    ENTITY, NAME = EntityType.US_SSN, "us_ssn"
    PATTERN = re.compile(r"(?<![\w-])(\d{3})([- ]?)(\d{2})\2(\d{4})(?![\w-]|\.\d)")
    CONTEXT = ("ssn", "social security", "social-security", "ss#", "ss #", "taxpayer", "tin")

    def evaluate(self, match: re.Match[str], text: str) -> float | None:
        digits = match.group(1) + match.group(3) + match.group(4)
        if not v.ssn_ok(digits):
            return None
        if v.ssn_is_documentation(digits):
            return DOCUMENTATION_SCORE
        context = _context(text, match.start(), match.end(), self.CONTEXT)
        if match.group(2) == "":
            return 0.85 if context else None  # nine bare digits are anything without the word SSN
        if match.group(2) == " ":
            return 0.9 if context else 0.4
        return 0.95 if context else 0.7


class UkNinoRecognizer(RegexRecognizer):
    ENTITY, NAME = EntityType.UK_NINO, "uk_nino"
    PATTERN = re.compile(r"(?<![A-Za-z0-9])([A-Z]{2}) ?(\d{2}) ?(\d{2}) ?(\d{2}) ?([A-D])(?![A-Za-z0-9])")
    CONTEXT = ("national insurance", "nino", "ni number", "ni no", "insurance number", "hmrc")

    def evaluate(self, match: re.Match[str], text: str) -> float | None:
        compact = "".join(match.groups())
        if not v.nino_ok(compact):
            return None
        context = _context(text, match.start(), match.end(), self.CONTEXT)
        return 0.95 if context else 0.75


class UrlCredentialsRecognizer(RegexRecognizer):
    ENTITY, NAME = EntityType.URL_CREDENTIALS, "url_credentials"
    # scheme://user:password@host; the reported span is `user:password`, the part to remove.
    PATTERN = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]{1,15}://(([^\s:/?#@\[\]]+):([^\s/?#@]+))@[^\s/?#@]+")
    GROUP = 1

    def evaluate(self, match: re.Match[str], text: str) -> float | None:
        password = match.group(3)
        if v.is_placeholder(password) or v.looks_like_code_reference(password):
            return None
        return 0.95


# --- secrets ------------------------------------------------------------------------------------------


class AwsAccessKeyRecognizer(RegexRecognizer):
    ENTITY, NAME = EntityType.API_KEY, "aws_access_key"
    PATTERN = re.compile(
        r"(?<![A-Za-z0-9])((?:AKIA|ASIA|ABIA|ACCA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[A-Z2-7]{16})(?![A-Za-z0-9])"
    )

    def evaluate(self, match: re.Match[str], text: str) -> float | None:
        value = match.group(1)
        if "EXAMPLE" in value:  # AWS documents AKIAIOSFODNN7EXAMPLE and friends
            return DOCUMENTATION_SCORE
        return 0.95 if len(set(value[4:])) >= 8 else None


class GithubTokenRecognizer(RegexRecognizer):
    ENTITY, NAME = EntityType.API_KEY, "github_token"
    PATTERN = re.compile(
        r"(?<![A-Za-z0-9_])(gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59})(?![A-Za-z0-9_])"
    )

    def evaluate(self, match: re.Match[str], text: str) -> float | None:
        body = match.group(1).split("_", 1)[1]
        if v.is_placeholder(body) or v.shannon_entropy(body) < 3.5:
            return None
        return 0.95


class StripeKeyRecognizer(RegexRecognizer):
    ENTITY, NAME = EntityType.API_KEY, "stripe_key"
    # Secret and restricted keys and webhook secrets; publishable keys (pk_) are public by design.
    PATTERN = re.compile(
        r"(?<![A-Za-z0-9_])((?:sk|rk)_(?:live|test)_[A-Za-z0-9]{20,247}|whsec_[A-Za-z0-9]{24,})(?![A-Za-z0-9_])"
    )

    def evaluate(self, match: re.Match[str], text: str) -> float | None:
        body = match.group(1).rsplit("_", 1)[1]
        if v.is_placeholder(body) or v.shannon_entropy(body) < 3.5:
            return None
        return 0.95


class SlackTokenRecognizer(RegexRecognizer):
    ENTITY, NAME = EntityType.API_KEY, "slack_token"
    PATTERN = re.compile(
        r"(?<![A-Za-z0-9])(xox[abposre]-[0-9]{6,}-[A-Za-z0-9-]{8,}"
        r"|https://hooks\.slack\.com/services/T[A-Z0-9]{6,}/B[A-Z0-9]{6,}/[A-Za-z0-9]{16,})(?![A-Za-z0-9])"
    )

    def evaluate(self, match: re.Match[str], text: str) -> float | None:
        tail = re.split(r"[-/]", match.group(1))[-1]
        if v.is_placeholder(tail) or v.shannon_entropy(tail) < 3.0:
            return None
        return 0.95


class GenericSecretRecognizer(RegexRecognizer):
    """`api_key = "..."`, `password: ...`, `Authorization: Bearer ...`: a secret-named assignment whose
    value looks random. The span is the value only."""

    ENTITY, NAME = EntityType.API_KEY, "generic_secret"
    PATTERN = re.compile(
        r"(?i)(?<![A-Za-z0-9_.-])([A-Za-z0-9_.-]{0,40}?(api[_-]?key|apikey|secret|token|passw(?:or)?d|pwd|access[_-]?key"
        r"|private[_-]?key|client[_-]?secret|auth[_-]?key|credentials?|bearer)[A-Za-z0-9_-]{0,40})"
        r"""["']?\s*(?:=|:|=>|:=|\s)\s*["']?([^\s"'`,;<>]{8,200})"""
    )
    GROUP = 3

    def evaluate(self, match: re.Match[str], text: str) -> float | None:
        keyword = match.group(2).lower()
        value = match.group(3).rstrip(".)]}")
        separator_is_space = not re.search(r"[=:]", text[match.end(1) : match.start(3)])
        if separator_is_space and keyword != "bearer":
            return None  # "the token expires" is prose; only `bearer <value>` may go without = or :
        if v.is_placeholder(value) or v.looks_like_code_reference(value):
            return None
        if re.fullmatch(r"https?://\S+", value):
            return None  # a URL is not itself the secret (credentials in URLs have their own recognizer)
        entropy = v.shannon_entropy(value)
        classes = v.char_classes(value)
        if keyword.startswith(("passw", "pwd")):
            # Passwords are short and human-made: a mix of character classes, or a long passphrase.
            if (len(value) >= 8 and classes >= 3 and entropy >= 2.5) or (len(value) >= 20 and entropy >= 3.0):
                return 0.8
            return None
        if len(value) >= 16 and entropy >= 3.3 and classes >= 2 and any(c.isdigit() for c in value):
            return 0.85 if entropy >= 4.0 else 0.7
        return None

    def spans(self, match: re.Match[str]) -> tuple[int, int]:
        start = match.start(3)
        return start, start + len(match.group(3).rstrip(".)]}"))


class JwtRecognizer(RegexRecognizer):
    ENTITY, NAME = EntityType.JWT, "jwt"
    PATTERN = re.compile(
        r"(?<![A-Za-z0-9_-])(eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*)(?![A-Za-z0-9_-])"
    )

    def evaluate(self, match: re.Match[str], text: str) -> float | None:
        return 0.95 if v.jwt_ok(match.group(1)) else None


class PemPrivateKeyRecognizer(RegexRecognizer):
    ENTITY, NAME = EntityType.PRIVATE_KEY, "pem_private_key"
    # The header and at least a line of base64 body; a truncated key (no END line) still leaks the key.
    PATTERN = re.compile(
        r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY((?: BLOCK)?)-----(?:[ \t]*(?:\r?\n|\\n))+"
        r"(?:[A-Za-z0-9-]+: [^\n\\]*(?:\r?\n|\\n))*(?:\s|\\n)*"  # RFC 1421 headers (Proc-Type, DEK-Info)
        # one base64 run per line; the lookahead keeps each run maximal so the loop cannot backtrack
        r"((?:[A-Za-z0-9+/=]{4,}(?![A-Za-z0-9+/=])(?:\s|\\n)*)+)"
        r"(-----END \1PRIVATE KEY\2-----)?"
    )

    def evaluate(self, match: re.Match[str], text: str) -> float | None:
        body = re.sub(r"\s|\\n", "", match.group(3))
        if len(body) < 64:
            return None
        return 0.99 if match.group(4) else 0.9


def default_recognizers() -> list[LocalRecognizer]:
    return [
        EmailRecognizer(),
        PhoneRecognizer(),
        CreditCardRecognizer(),
        IbanRecognizer(),
        Ipv4Recognizer(),
        Ipv6Recognizer(),
        UsSsnRecognizer(),
        UkNinoRecognizer(),
        UrlCredentialsRecognizer(),
        AwsAccessKeyRecognizer(),
        GithubTokenRecognizer(),
        StripeKeyRecognizer(),
        SlackTokenRecognizer(),
        GenericSecretRecognizer(),
        JwtRecognizer(),
        PemPrivateKeyRecognizer(),
    ]
