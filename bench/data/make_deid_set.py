"""Generate the labelled de-identification set: planted PII and secrets, and PII-free look-alikes.

    python bench/data/make_deid_set.py [--out bench/data/deid_labelled.jsonl] [--seed 20250707]

Deterministic for a given seed. Each line is {"text", "spans": [{"start", "end", "type"}], "kind",
"category"}; `kind` is "pii", "lookalike" or "mixed" and `category` names the generator, for error
analysis. The positives are drawn at random from the formats each identifier really takes (valid
checksums, allocation rules); the look-alikes are drawn from things that share a shape but are not
personal data or secrets: numbers failing Luhn or mod-97, order and tracking numbers, version strings,
dates, times, hashes, UUIDs, MAC addresses, public keys and certificates, publishable keys, and the
documentation values vendors and RFCs publish (example.com, 192.0.2.0/24, AKIA...EXAMPLE). The
generator knows nothing of the recognizers' code; it validates positives with the same public rules
(Luhn, ISO 7064, libphonenumber) a reader would use.

Names and places (PERSON, LOCATION) come from Faker in thirteen locales, dropped into conversational
sentences, notes and messages written as people write them (chat in lower case, a name beside an
address or a phone number, a street, a city, a country), not phrased for a tagger. They use their own
random streams (seeded from `--seed`), so the rows before them do not change. Faker's data differ
between its releases: the committed JSONL is the reference; regenerate it with the pinned Faker.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import re
import string
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import phonenumbers

OUT = Path(__file__).with_name("deid_labelled.jsonl")

FIRST = [
    "james",
    "maria",
    "wei",
    "aisha",
    "lucas",
    "sofia",
    "olu",
    "hannah",
    "diego",
    "priya",
    "noah",
    "elena",
    "kenji",
    "fatima",
    "liam",
    "chloe",
    "mateo",
    "zara",
    "ivan",
    "grace",
]
LAST = [
    "smith",
    "garcia",
    "chen",
    "okafor",
    "muller",
    "rossi",
    "nguyen",
    "patel",
    "kowalski",
    "silva",
    "brown",
    "haddad",
    "tanaka",
    "dubois",
    "larsen",
    "obrien",
    "ferreira",
    "novak",
    "cohen",
    "ali",
]
DOMAINS = [
    "gmail.com",
    "outlook.com",
    "proton.me",
    "yahoo.co.uk",
    "northwind-traders.com",
    "acme-robotics.io",
    "uni-heidelberg.de",
    "mail.ru",
    "fastmail.fm",
    "riverbank.org",
    "kbtech.co.jp",
    "hospital-lyon.fr",
]
US_AREAS = [
    201,
    206,
    212,
    213,
    303,
    305,
    312,
    404,
    415,
    503,
    512,
    602,
    617,
    702,
    718,
    773,
    808,
    860,
    917,
    971,
]
B32 = string.ascii_uppercase + "234567"
ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"
B64URL = ALNUM + "-_"


class Gen:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)

    # --- helpers ----------------------------------------------------------------------------------
    def pick(self, seq):  # type: ignore[no-untyped-def]
        return self.r.choice(seq)

    def digits(self, n: int) -> str:
        return "".join(self.r.choice(string.digits) for _ in range(n))

    def chars(self, alphabet: str, n: int) -> str:
        return "".join(self.r.choice(alphabet) for _ in range(n))

    @staticmethod
    def luhn_digit(partial: str) -> str:
        total = 0
        for i, ch in enumerate(reversed(partial)):
            d = int(ch)
            if i % 2 == 0:
                d *= 2
                if d > 9:
                    d -= 9
            total += d
        return str((10 - total % 10) % 10)

    # --- positives --------------------------------------------------------------------------------
    def email(self) -> str:
        f, last = self.pick(FIRST), self.pick(LAST)
        local = self.pick(
            [
                f"{f}.{last}",
                f"{f[0]}{last}{self.r.randint(1, 99)}",
                f"{f}_{last}",
                f"{f}+news",
                f"{last}.{f}",
                f"{f}{self.r.randint(1970, 2005)}",
            ]
        )
        email = f"{local}@{self.pick(DOMAINS)}"
        return email.upper() if self.r.random() < 0.05 else email

    def phone(self) -> str:
        while True:
            kind = self.r.random()
            if kind < 0.55:
                area, exch, line = self.pick(US_AREAS), self.r.randint(200, 999), self.digits(4)
                text = self.pick(
                    [
                        f"({area}) {exch}-{line}",
                        f"{area}-{exch}-{line}",
                        f"{area}.{exch}.{line}",
                        f"+1 {area} {exch} {line}",
                        f"+1-{area}-{exch}-{line}",
                        f"1-{area}-{exch}-{line}",
                    ]
                )
                region = "US"
            elif kind < 0.85:
                text = self.pick(
                    [
                        f"+44 20 7{self.digits(3)} {self.digits(4)}",
                        f"020 7{self.digits(3)} {self.digits(4)}",
                        f"+44 7{self.r.randint(400, 999)} {self.digits(6)}",
                        f"07{self.r.randint(400, 999)} {self.digits(6)}",
                        f"0161 {self.r.randint(200, 999)} {self.digits(4)}",
                    ]
                )
                region = "GB"
            else:
                text = self.pick(
                    [
                        f"+49 30 {self.r.randint(2, 9)}{self.digits(7)}",
                        f"+33 1 {self.r.randint(40, 59)} {self.digits(2)} {self.digits(2)} {self.digits(2)}",
                        f"+61 2 9{self.digits(3)} {self.digits(4)}",
                        f"+91 98{self.digits(3)} {self.digits(5)}",
                    ]
                )
                region = "ZZ"
            try:
                if phonenumbers.is_valid_number(phonenumbers.parse(text, None if region == "ZZ" else region)):
                    return text
            except phonenumbers.NumberParseException:
                continue

    def card(self) -> str:
        prefix, length = self.pick(
            [
                ("4", 16),
                ("4", 16),
                ("51", 16),
                ("55", 16),
                ("2221", 16),
                ("34", 15),
                ("37", 15),
                ("6011", 16),
                ("3530", 16),
            ]
        )
        body = prefix + self.digits(length - len(prefix) - 1)
        number = body + self.luhn_digit(body)
        style = self.r.random()
        if length == 15 and style < 0.6:
            return f"{number[:4]} {number[4:10]} {number[10:]}"
        if style < 0.45:
            return " ".join(number[i : i + 4] for i in range(0, len(number), 4))
        if style < 0.65:
            return "-".join(number[i : i + 4] for i in range(0, len(number), 4))
        return number

    def iban(self, valid: bool = True) -> str:
        country, bban = self.pick(
            [
                ("DE", self.digits(18)),
                ("GB", self.chars(string.ascii_uppercase, 4) + self.digits(14)),
                ("FR", self.digits(10) + self.chars(ALNUM.upper(), 11) + self.digits(2)),
                ("NL", self.chars(string.ascii_uppercase, 4) + self.digits(10)),
                ("ES", self.digits(20)),
                ("IT", self.chars(string.ascii_uppercase, 1) + self.digits(10) + self.digits(12)),
            ]
        )
        numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
        check = 98 - int(numeric) % 97
        if not valid:
            check = self.r.choice([c for c in range(2, 99) if c != check])
        compact = f"{country}{check:02d}{bban}"
        if self.r.random() < 0.6:
            return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))
        return compact

    def ipv4(self) -> str:
        while True:
            a = self.r.randint(1, 223)
            if a in (10, 127, 169, 172, 192, 198, 203, 100, 0):
                continue
            return f"{a}.{self.r.randint(0, 255)}.{self.r.randint(0, 255)}.{self.r.randint(1, 254)}"

    def private_ipv4(self) -> str:
        return self.pick(
            [
                f"10.{self.r.randint(0, 255)}.{self.r.randint(0, 255)}.{self.r.randint(1, 254)}",
                f"192.168.{self.r.randint(0, 255)}.{self.r.randint(1, 254)}",
                f"172.{self.r.randint(16, 31)}.{self.r.randint(0, 255)}.{self.r.randint(1, 254)}",
            ]
        )

    def ipv6(self) -> str:
        groups = [self.pick(["2a00", "2a02", "2600", "2604", "2001", "2400", "2c0f"])] + [
            format(self.r.randint(0, 0xFFFF), "x") for _ in range(7)
        ]
        if groups[0] == "2001":
            groups[1] = format(self.r.randint(0x4000, 0xCFFF), "x")  # stay clear of 2001:db8::/32
        if self.r.random() < 0.5:
            cut = self.r.randint(3, 6)
            return ":".join(groups[:cut]) + "::" + groups[-1]
        return ":".join(groups)

    def ssn(self) -> str:
        area = self.r.choice([a for a in range(1, 900) if a != 666])
        return f"{area:03d}-{self.r.randint(1, 99):02d}-{self.r.randint(1, 9999):04d}"

    def nino(self) -> str:
        first = self.pick("ABCEGHJKLMNOPRSTWXYZ")
        second = self.pick("ABCEGHJKLMNPRSTWXYZ")
        if first + second in {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}:
            return self.nino()
        d = self.digits(6)
        suffix = self.pick("ABCD")
        return self.pick(
            [f"{first}{second}{d}{suffix}", f"{first}{second} {d[:2]} {d[2:4]} {d[4:]} {suffix}"]
        )

    def password(self) -> str:
        word = self.pick(["Maple", "river", "Orbit", "tango", "Falcon", "copper", "Nimbus", "violet"])
        digits, symbol = self.r.randint(10, 9999), self.pick("!@#$%&*?")
        return f"{word}{digits}{symbol}{self.chars(ALNUM, self.r.randint(2, 6))}"

    def url_credentials(self) -> tuple[str, str]:
        scheme = self.pick(
            ["postgres", "postgresql", "mysql", "redis", "amqp", "https", "ftp", "mongodb+srv"]
        )
        user = self.pick([self.pick(FIRST), "svc_" + self.pick(LAST), "admin", "deploy", "app_rw"])
        host = self.pick(
            [
                "db.internal",
                "10.0.3.7",
                "cluster0.ab12c.mongodb.net",
                "cache-01.prod.local",
                "files.riverbank.org",
                "mq.acme-robotics.io",
            ]
        )
        # Reserved characters in userinfo are percent-encoded in a real URL (RFC 3986).
        cred = f"{user}:{quote(self.password(), safe='')}"
        return f"{scheme}://{cred}@{host}/{self.pick(['app', 'orders', '0', 'vhost', 'exports'])}", cred

    def api_key(self) -> tuple[str, str, str]:
        """(sentence with {v}, value, vendor)."""
        vendor = self.pick(["aws", "github", "stripe", "slack", "generic", "generic", "bearer", "password"])
        if vendor == "aws":
            v = self.pick(["AKIA", "ASIA"]) + self.chars(B32, 16)
            t = self.pick(
                ["aws_access_key_id = {v}", "export AWS_ACCESS_KEY_ID={v}", "the deploy user's key is {v}"]
            )
        elif vendor == "github":
            v = self.pick(["ghp_", "gho_", "ghs_"]) + self.chars(ALNUM, 36)
            t = self.pick(
                ["GITHUB_TOKEN={v}", "git clone with token {v} failed", "use {v} for the CI runner"]
            )
        elif vendor == "stripe":
            v = self.pick(["sk_live_", "sk_test_", "rk_live_"]) + self.chars(ALNUM, self.r.randint(24, 99))
            t = self.pick(['stripe.api_key = "{v}"', "STRIPE_SECRET_KEY={v}", "Stripe key for the shop: {v}"])
        elif vendor == "slack":
            v = f"xoxb-{self.digits(12)}-{self.digits(13)}-{self.chars(ALNUM, 24)}"
            t = self.pick(["SLACK_BOT_TOKEN={v}", "the bot posts with {v}", "slack token: {v}"])
        elif vendor == "generic":
            v = self.pick([self.chars("0123456789abcdef", 32), self.chars(ALNUM, 40), self.chars(B64, 40)])
            t = self.pick(
                [
                    'api_key = "{v}"',
                    '"apiKey": "{v}"',
                    "client_secret: {v}",
                    "X_API_KEY={v}",
                    "secret_access_key={v}",
                    "SENDGRID_API_KEY='{v}'",
                ]
            )
        elif vendor == "bearer":
            v = self.chars(B64URL, self.r.randint(32, 48))
            t = 'curl -H "Authorization: Bearer {v}" https://api.riverbank.org/v2/accounts'
        else:
            v = self.password()
            t = self.pick(
                ["password: {v}", "DB_PASSWORD={v}", "the wifi password = {v}", '"password": "{v}"']
            )
        return t, v, vendor

    def jwt(self) -> str:
        header = {"alg": self.pick(["HS256", "RS256", "ES256"]), "typ": "JWT"}
        payload = {
            "sub": self.digits(8),
            "name": f"{self.pick(FIRST).title()} {self.pick(LAST).title()}",
            "iat": self.r.randint(1_600_000_000, 1_750_000_000),
        }

        def enc(obj: dict) -> str:  # type: ignore[type-arg]
            return (
                base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode())
                .rstrip(b"=")
                .decode()
            )

        return f"{enc(header)}.{enc(payload)}.{self.chars(B64URL, 43)}"

    def pem(self, label: str = "PRIVATE KEY", escaped: bool = False) -> str:
        kind = self.pick(["", "RSA ", "EC ", "OPENSSH "]) if label == "PRIVATE KEY" else ""
        lines = [self.chars(B64, 64) for _ in range(self.r.randint(3, 8))] + [
            self.chars(B64, self.r.randint(8, 60)) + "=="
        ]
        nl = "\\n" if escaped else "\n"
        return f"-----BEGIN {kind}{label}-----{nl}" + nl.join(lines) + f"{nl}-----END {kind}{label}-----"


POSITIVE_TEMPLATES: dict[str, list[str]] = {
    "EMAIL": [
        "Send the signed contract to {v} before Friday.",
        "{v}",
        "Contact: {v}",
        "cc {v} on every invoice",
        "Her old address ({v}) still forwards.",
        "reply-to: <{v}>",
        "mailto:{v}",
    ],
    "PHONE": [
        "Call the site manager on {v} if the gate is locked.",
        "tel: {v}",
        "Mobile {v}",
        "Reach me at {v} after six.",
        "Office line {v}, ask for Dana.",
        "{v} (home)",
        "The landlord's number is {v}.",
    ],
    "CREDIT_CARD": [
        "Card on file: {v}",
        "Paid with {v} exp 04/27",
        "visa {v}",
        "{v}",
        "Charge the deposit to {v} please.",
    ],
    "IBAN": ["Transfer the rent to {v}.", "IBAN: {v}", "Refunds go to account {v}", "{v} (savings)"],
    "IP_ADDRESS": [
        "The VPN gateway is {v}.",
        "Blocked login from {v} at 03:12",
        "ssh deploy@{v}",
        "Client IP {v} hit the rate limit",
        "allowlist {v} for the office",
    ],
    "US_SSN": [
        "SSN: {v}",
        "Her social security number is {v}.",
        "Applicant {v} approved",
        "{v}",
        "Tax form lists SSN {v}",
    ],
    "UK_NINO": ["National Insurance number {v}", "NINO: {v}", "Payroll record {v} updated", "{v}"],
    "URL_CREDENTIALS": [
        "DATABASE_URL={v}",
        "Connect with {v}",
        "The importer reads {v} on start.",
        "broker: {v}",
    ],
    "JWT": ["Authorization: Bearer {v}", "token={v}", "The session cookie holds {v}", "{v}"],
    "PRIVATE_KEY": ["{v}", "Here is the deploy key:\n{v}\nKeep it safe.", '"private_key": "{v}"'],
}

LOOKALIKES: list[tuple[str, Callable[[Gen], str]]] = []


def lookalike(name: str) -> Callable[[Callable[[Gen], str]], Callable[[Gen], str]]:
    def deco(fn: Callable[[Gen], str]) -> Callable[[Gen], str]:
        LOOKALIKES.append((name, fn))
        return fn

    return deco


@lookalike("luhn_fail_card")
def _luhn_fail(g: Gen) -> str:
    card = g.card()
    digits = [c for c in card if c.isdigit()]
    last = str((int(digits[-1]) + g.r.randint(1, 9)) % 10)
    return g.pick(["Card on file: {v}", "visa {v}", "{v}"]).format(v=card[:-1] + last)


@lookalike("order_id")
def _order(g: Gen) -> str:
    return g.pick(
        [
            f"Order #{g.digits(g.r.randint(6, 10))} shipped",
            f"Your order ORD-{g.r.randint(2019, 2025)}-{g.digits(6)} is ready",
            f"invoice INV-{g.digits(8)} paid",
            f"ticket {g.r.randint(2019, 2025)}-{g.digits(6)} closed",
            f"Tracking 1Z{g.chars(string.ascii_uppercase + string.digits, 16)}",
            f"Ref {g.digits(4)}-{g.digits(4)}-{g.digits(2)}",
        ]
    )


@lookalike("version")
def _version(g: Gen) -> str:
    return g.pick(
        [
            f"Upgraded to v{g.r.randint(1, 9)}.{g.r.randint(0, 30)}.{g.r.randint(0, 20)}",
            f"Windows build 10.0.{g.r.randint(17000, 26000)}.{g.r.randint(1000, 5000)}",
            f"Python {g.r.randint(2, 3)}.{g.r.randint(6, 13)}.{g.r.randint(0, 9)} ships it",
            f"release 1.{g.r.randint(0, 9)}.{g.r.randint(0, 9)}.{g.r.randint(0, 9)}.{g.r.randint(0, 9)}",
            f"OID 1.3.6.1.4.1.{g.r.randint(100, 60000)}.{g.r.randint(1, 99)}",
            f"chart version {g.r.randint(256, 999)}.{g.r.randint(0, 9)}."
            f"{g.r.randint(0, 9)}.{g.r.randint(0, 9)}",
        ]
    )


@lookalike("date_time")
def _date(g: Gen) -> str:
    y, m, d = g.r.randint(1990, 2030), g.r.randint(1, 12), g.r.randint(1, 28)
    return g.pick(
        [
            f"Meeting on {y}-{m:02d}-{d:02d} at {g.r.randint(0, 23):02d}:"
            f"{g.r.randint(0, 59):02d}:{g.r.randint(0, 59):02d}",
            f"born {d:02d}/{m:02d}/{y}",
            f"{d:02d}.{m:02d}.{y} opening hours 09:00-17:30",
            f"timestamp {g.r.randint(1_600_000_000_000, 1_750_000_000_000)}",
            f"period {y}-{y + g.r.randint(1, 9)}",
            f"ISO week {y}-W{g.r.randint(1, 52):02d}",
            f"{y}.{m:02d}.{d:02d} backup",
        ]
    )


@lookalike("hash")
def _hash(g: Gen) -> str:
    hexd = "0123456789abcdef"
    return g.pick(
        [
            f"commit {g.chars(hexd, 40)}",
            f"sha256: {g.chars(hexd, 64)}",
            f"md5 {g.chars(hexd, 32)}",
            f"fixed in {g.chars(hexd, 7)}",
            f"request id {g.chars(hexd, 8)}-{g.chars(hexd, 4)}-4{g.chars(hexd, 3)}-"
            f"a{g.chars(hexd, 3)}-{g.chars(hexd, 12)}",
            f'etag "{g.chars(hexd, 32)}"',
            f"checksum={g.chars(hexd, 40)}",
        ]
    )


@lookalike("network_lookalike")
def _network(g: Gen) -> str:
    hexd = "0123456789abcdef"
    return g.pick(
        [
            f"MAC {':'.join(g.chars(hexd, 2) for _ in range(6))}",
            f"listen on 127.0.0.1:{g.r.randint(1000, 9999)}",
            "bind 0.0.0.0",
            f"coordinates {g.r.uniform(-80, 80):.4f}, {g.r.uniform(-170, 170):.4f}",
            f"address {g.r.randint(256, 999)}.{g.r.randint(0, 255)}."
            f"{g.r.randint(0, 255)}.{g.r.randint(0, 255)} is invalid",
            "std::vector<int> and std::map",
            "docs use 192.0.2.10 and 2001:db8::7",
            f"at {g.r.randint(0, 23):02d}:{g.r.randint(0, 59):02d}:{g.r.randint(0, 59):02d} UTC",
            "ff02::1 is all-nodes multicast",
            "::1 is loopback",
        ]
    )


@lookalike("invalid_iban")
def _bad_iban(g: Gen) -> str:
    return g.pick(["IBAN: {v}", "Transfer to {v}"]).format(v=g.iban(valid=False))


@lookalike("invalid_national_id")
def _bad_ids(g: Gen) -> str:
    return g.pick(
        [
            f"SSN {g.pick(['000', '666', '9' + g.digits(2)])}-"
            f"{g.r.randint(1, 99):02d}-{g.r.randint(1, 9999):04d} is not valid",
            f"case {g.r.randint(100, 899)}-00-{g.r.randint(1, 9999):04d}",
            f"ZIP {g.digits(5)}-{g.digits(4)}",
            f"NINO QQ {g.digits(2)} {g.digits(2)} {g.digits(2)} C is the HMRC example",
            f"part {g.pick('ABCEGH')}{g.pick('ABCEGH')}{g.digits(6)}E",
            f"ticket {g.digits(9)}",
            "SSN 123-45-6789 in the sample form",
            f"ISBN 978-{g.r.randint(0, 9)}-{g.digits(2)}-{g.digits(6)}-{g.r.randint(0, 9)}",
            f"VAT GB{g.digits(9)}",
        ]
    )


@lookalike("phone_lookalike")
def _bad_phone(g: Gen) -> str:
    return g.pick(
        [
            "Call 123-456-7890 in the template",
            f"extension {g.digits(4)}",
            f"{g.r.randint(1990, 2020)}-{g.r.randint(2021, 2030)} season",
            f"room {g.r.randint(100, 999)}-{g.r.randint(10, 99)}",
            f"price ${g.r.randint(1, 999)},{g.digits(3)},{g.digits(3)}.{g.digits(2)}",
            f"order {g.r.choice(US_AREAS)}{g.r.randint(200, 999)}{g.digits(4)} shipped",
            f"serial {g.digits(3)}-{g.digits(3)}-{g.digits(3)}",
        ]
    )


@lookalike("example_values")
def _examples(g: Gen) -> str:
    return g.pick(
        [
            "Mail user@example.com for a demo",
            "jane.doe@example.org is a placeholder",
            "test@company.test",
            "AKIAIOSFODNN7EXAMPLE is the documented key",
            "stripe test card 4242 4242 4242 4242",
            "api_key=YOUR_API_KEY_HERE",
            "password: <your password>",
            "postgres://user:password@localhost/db",
            'token = os.environ["API_TOKEN"]',
            "secret: ${SECRET_KEY}",
            "ghp_XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
            "Authorization: Bearer <token>",
            'password = "********"',
            "DATABASE_URL=postgres://app:${DB_PASSWORD}@db/app",
            "client_secret: changeme",
            "api_key = settings.STRIPE_API_KEY",
            "icon@2x.png and logo@3x.svg",
            "npm i lodash@4.17.21",
            "git@github.com:acme/robot.git",
            "@types/node",
            "@app.route('/health')",
        ]
    )


@lookalike("public_material")
def _public(g: Gen) -> str:
    return g.pick(
        [
            f"publishable key pk_live_{g.chars(ALNUM, 24)}",
            f"pk_test_{g.chars(ALNUM, 24)} goes in the browser",
            g.pem("PUBLIC KEY"),
            g.pem("CERTIFICATE"),
            "The file starts with -----BEGIN PRIVATE KEY----- and nothing else here.",
            f"data:image/png;base64,{g.chars(B64, 60)}",
            f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{g.chars(B64, 43)} ops@laptop",
            "eyJhbGciOiJIUzI1NiJ9 is only a header",
            f"https://riverbank.org/docs?page={g.r.randint(1, 50)}&user=guest",
            f"http://cache-01.prod.local:{g.r.randint(1000, 9999)}/metrics",
            "https://deploy@github.com/acme/robot",
            "max_tokens: 4096",
            f"token_count={g.digits(8)}",
            "the token expires after thirty minutes",
            "Reset your password via the account page.",
        ]
    )


@lookalike("prose")
def _prose(g: Gen) -> str:
    return g.pick(
        [
            f"We raised ${g.r.randint(1, 99)},{g.digits(3)},{g.digits(3)} in {g.r.randint(2000, 2024)}.",
            f"Room {g.r.randint(100, 999)} is on the {g.r.randint(2, 9)}th floor.",
            f"The recipe serves {g.r.randint(2, 12)} and takes {g.r.randint(10, 90)} minutes.",
            f"Bus {g.r.randint(1, 300)} leaves every {g.r.randint(5, 30)} minutes from stop {g.digits(5)}.",
            f"Population grew {g.r.randint(1, 9)}.{g.r.randint(0, 9)}% to "
            f"{g.r.randint(1, 9)},{g.digits(3)},{g.digits(3)}.",
            "Call me later, I'm in a meeting.",
            "Her phone died, so she emailed instead.",
        ]
    )


# --- names and places ------------------------------------------------------------------------------

NAME_LOCALES = [
    "en_US", "en_GB", "en_IE", "en_IN", "en_AU", "de_DE", "fr_FR", "es_ES", "it_IT", "pt_BR", "nl_NL",
    "pl_PL", "sv_SE",
]  # fmt: skip
# Locales whose cities are real places (en_US and en_GB invent town names like "Hodgesfort", kept too:
# a reader cannot tell them from real small towns, and neither should a tagger need to).
CITY_LOCALES = ["en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL", "pl_PL", "sv_SE", "pt_BR"]

# {name} full name, {first} first name, {last} surname, {city}, {country}, {street} a street name,
# {address} a street address, {email}, {phone}. A trailing "|lower" writes the whole message in lower
# case, as people do in chat.
PERSON_PLACE_TEMPLATES = [
    "I had coffee with {name} yesterday, she's thinking of moving to {city}.",
    "{first} says the flat on {street} is still free if you want it.",
    "Reminder: call {name} about the invoice before the weekend.",
    "My sister lives in {city} now, right next to the station.",
    "We drove through {country} last summer and it rained the whole time.",
    "Can you pick up {first} from school on Thursday? I'm stuck at work.",
    "{name} ({email}) wants the slides by Monday.",
    "Dinner at {first}'s place on Friday, bring something sweet.",
    "ok so {first} and {last_first} are both coming, {first} is bringing the tent|lower",
    "lol {first} just texted me from {city}, apparently it's snowing there|lower",
    "did u ask {name} about the keys?|lower",
    "The package should go to {address}, {city}.",
    "Our new office is at {address}; parking is round the back.",
    "{name} from accounts said the refund takes five days.",
    "Met {name} at the conference in {city}, lovely person, works on compilers.",
    "my dentist moved to {street}, which is a nightmare to get to|lower",
    "Flight to {city} got cancelled again, so I'm staying with {first} tonight.",
    "Grandma was born in {country} and still cooks like it.",
    "Note to self: {name}'s number is {phone}.",
    "The contractor, {name}, will be at {address} at 8am.",
    "Told {first} I'd send the photos from {city} tonight.",
    "{first}: are you still in {city}? I'll be there on the 12th.",
    "hey {first}, can we move our call to tomorrow?|lower",
    "We're thinking {country} or maybe {country2} for the honeymoon.",
    "Ask {name} whether the {city} warehouse has the spare parts.",
    "{last_title} has been the landlord here for ten years and never fixed the boiler.",
    "Happy birthday {first}! Hope {city} is treating you well.",
    "According to {name}, the train from {city} to {city2} takes four hours.",
    "I'm meeting {first} outside the bakery on {street} at noon.",
    "Book club is at {name}'s house this month, {address}.",
    "Sorry {first}, I won't make it, my car broke down outside {city}.",
    "{name} and {name2} are sharing the room at the hotel in {city}.",
    "the kids love visiting {first} in {city} in the holidays|lower",
    "Emergency contact: {name}, {phone}.",
    "Please forward this to {name} and cc {first2}.",
    "We lived on {street} until I was seven, then moved to {country}.",
    "{first} recommended a hairdresser near {street}, worth trying.",
    "Interview with {name} went well, she can start in {city} next month.",
    "So {first} finally quit and moved back to {country}.",
    "Shipping address updated to {address}, {city}, {country}.",
]

# Capitalised words that name no person and no place, in sentences of the same register.
NAME_PLACE_LOOKALIKES = [
    "Monday works better for me than Friday.",
    "The Python script crashed again after the update.",
    "Happy New Year! Let's do better with the budget.",
    "Can you send me the PDF of the Terms and Conditions?",
    "I finally finished Breaking Bad, what a finale.",
    "Our Wi-Fi keeps dropping every evening around nine.",
    "The Board approved the Q3 Roadmap on Tuesday.",
    "Use Ctrl and Shift together to open the Command Palette.",
    "Christmas dinner is at six, don't be late.",
    "The Android app asks for Bluetooth every time.",
    "I switched to the Premium plan in September.",
    "Thanks again for the help with the Excel sheet!",
]


def _lower_first(value: str) -> str:
    return value[:1].lower() + value[1:]


def make_names_places(seed: int) -> list[dict]:  # type: ignore[type-arg]
    from faker import Faker

    r = random.Random(seed * 7 + 1)
    fakers = {}
    for i, loc in enumerate(sorted(set(NAME_LOCALES) | set(CITY_LOCALES))):
        fake = Faker(loc)
        fake.seed_instance(seed + i)
        for provider in fake.providers:
            # it_IT builds its city list from a set, whose order changes with PYTHONHASHSEED
            if isinstance(getattr(provider, "cities", None), list):
                provider.cities = sorted(provider.cities)
        fakers[loc] = fake
    english = Faker("en_US")
    english.seed_instance(seed - 1)

    def country() -> str:
        while True:  # people say "Bolivia", not "Bolivia, Plurinational State of"
            value = english.country()
            if "," not in value and "(" not in value and len(value) <= 24:
                return value

    def street(fake) -> str:  # type: ignore[no-untyped-def]
        return fake.street_name()

    def address(fake) -> str:  # type: ignore[no-untyped-def]
        return " ".join(fake.street_address().split())

    def email(first: str, last: str) -> str:
        local = f"{first}.{last}".lower()
        local = "".join(c for c in local if c.isascii() and (c.isalnum() or c == "."))
        return f"{local or 'hello'}@{r.choice(DOMAINS)}"

    def phone() -> str:
        return r.choice(
            [
                f"+44 7{r.randint(400, 999)} {r.randint(100000, 999999)}",
                f"({r.choice(US_AREAS)}) {r.randint(200, 999)}-{r.randint(1000, 9999)}",
                f"+49 30 {r.randint(2, 9)}{r.randint(1000000, 9999999)}",
            ]
        )

    rows: list[dict] = []  # type: ignore[type-arg]
    for n in range(260):
        template = (
            PERSON_PLACE_TEMPLATES[n % len(PERSON_PLACE_TEMPLATES)]
            if n < 80
            else r.choice(PERSON_PLACE_TEMPLATES)
        )
        lower = template.endswith("|lower")
        template = template.removesuffix("|lower")
        person_fake = fakers[r.choice(NAME_LOCALES)]
        place_fake = fakers[r.choice(CITY_LOCALES)]
        first, last = person_fake.first_name(), person_fake.last_name()
        other = fakers[r.choice(NAME_LOCALES)]
        values: dict[str, tuple[str, str | None]] = {
            "{name}": (f"{first} {last}", "PERSON"),
            "{name2}": (other.name(), "PERSON"),
            "{first}": (first, "PERSON"),
            "{first2}": (other.first_name(), "PERSON"),
            "{last_first}": (other.first_name(), "PERSON"),
            "{last_title}": (r.choice(["Mr", "Mrs", "Ms", "Dr"]) + " " + last, "PERSON"),
            "{city}": (place_fake.city(), "LOCATION"),
            "{city2}": (fakers[r.choice(CITY_LOCALES)].city(), "LOCATION"),
            "{country}": (country(), "LOCATION"),
            "{country2}": (country(), "LOCATION"),
            "{street}": (street(place_fake), "LOCATION"),
            "{address}": (address(place_fake), "LOCATION"),
            "{email}": (email(first, last), "EMAIL"),
            "{phone}": (phone(), "PHONE"),
        }
        text, spans = "", []
        cursor = 0
        for m in re.finditer(r"\{[a-z_0-9]+\}", template):
            text += template[cursor : m.start()]
            value, etype = values[m.group(0)]
            if lower:
                value = value.lower()
            elif m.start() == 0 and etype == "LOCATION" and value[:1].islower():
                value = value[:1].upper() + value[1:]  # "avenue Lesage" starting a sentence
            start = len(text)
            text += value
            if etype:
                spans.append({"start": start, "end": start + len(value), "type": etype})
            cursor = m.end()
        text += template[cursor:]
        if lower:
            text = text.lower()
        category = "names_places:lower" if lower else "names_places"
        rows.append({"text": text, "spans": spans, "kind": "pii", "category": category})
    for text in NAME_PLACE_LOOKALIKES:
        rows.append({"text": text, "spans": [], "kind": "lookalike", "category": "names_places:lookalike"})
    return rows


def _label_template_names(rows: list[dict]) -> None:  # type: ignore[type-arg]
    """The structured templates mention one person by first name ("ask for Dana"): label her."""
    for row in rows:
        for m in re.finditer(r"\bDana\b", row["text"]):
            row["spans"].append({"start": m.start(), "end": m.end(), "type": "PERSON"})
            row["spans"].sort(key=lambda s: s["start"])


def make(seed: int) -> list[dict]:  # type: ignore[type-arg]
    rows = make_structured(seed)
    _label_template_names(rows)
    return rows + make_names_places(seed)


def make_structured(seed: int) -> list[dict]:  # type: ignore[type-arg]
    g = Gen(seed)
    rows: list[dict] = []  # type: ignore[type-arg]

    def planted(template: str, parts: list[tuple[str, str, str | None]], kind: str, category: str) -> None:
        """`parts`: (placeholder, value, type-or-None). Offsets are computed after substitution."""
        text, spans = template, []
        for placeholder, value, etype in parts:
            at = text.index(placeholder)
            text = text[:at] + value + text[at + len(placeholder) :]
            for s in spans:  # keep earlier spans valid if a later placeholder sat before them
                if s["start"] > at:
                    s["start"] += len(value) - len(placeholder)
                    s["end"] += len(value) - len(placeholder)
            if etype:
                spans.append({"start": at, "end": at + len(value), "type": etype})
        rows.append(
            {
                "text": text,
                "spans": sorted(spans, key=lambda s: s["start"]),
                "kind": kind,
                "category": category,
            }
        )

    makers: dict[str, Callable[[], str]] = {
        "EMAIL": g.email,
        "PHONE": g.phone,
        "CREDIT_CARD": g.card,
        "IBAN": g.iban,
        "US_SSN": g.ssn,
        "UK_NINO": g.nino,
        "JWT": g.jwt,
        "IP_ADDRESS": lambda: g.pick([g.ipv4, g.ipv4, g.private_ipv4, g.ipv6])(),
        "PRIVATE_KEY": lambda: g.pem(escaped=g.r.random() < 0.3),
    }
    for etype, template_list in POSITIVE_TEMPLATES.items():
        for _ in range(24):
            template = g.pick(template_list)
            if etype == "URL_CREDENTIALS":
                url, cred = g.url_credentials()
                at = url.index(cred)
                text = template.replace("{v}", url)
                start = text.index(url) + at
                spans = [{"start": start, "end": start + len(cred), "type": etype}]
                if "@10.0.3.7/" in url:  # the host is an address too, and labelled as one
                    ip_at = text.index("10.0.3.7")
                    spans.append({"start": ip_at, "end": ip_at + len("10.0.3.7"), "type": "IP_ADDRESS"})
                rows.append({"text": text, "spans": spans, "kind": "pii", "category": etype})
                continue
            value = makers[etype]()
            if etype == "PRIVATE_KEY" and "\\n" in value:
                template = '"private_key": "{v}"'
            elif etype == "PRIVATE_KEY" and template.startswith('"'):
                template = "{v}"
            planted(template, [("{v}", value, etype)], "pii", etype)
    for _ in range(40):
        template, value, vendor = g.api_key()
        planted(template, [("{v}", value, "API_KEY")], "pii", f"API_KEY:{vendor}")

    mixed_templates = [
        "Tenant: {a}, phone {b}, card {c}.",
        "Onboarding note - email {a}; SSN {b}; deposit from IBAN {c}.",
        "Incident: login from {a} used key {b} for user {c}.",
        "Backup job: DATABASE_URL={a}, alerts to {b}, NI number {c}.",
    ]
    for _ in range(24):
        t = g.pick(mixed_templates)
        if t.startswith("Tenant"):
            parts = [
                ("{a}", g.email(), "EMAIL"),
                ("{b}", g.phone(), "PHONE"),
                ("{c}", g.card(), "CREDIT_CARD"),
            ]
        elif t.startswith("Onboarding"):
            parts = [("{a}", g.email(), "EMAIL"), ("{b}", g.ssn(), "US_SSN"), ("{c}", g.iban(), "IBAN")]
        elif t.startswith("Incident"):
            _tpl, key, _vendor = g.api_key()
            while _vendor in ("generic", "password", "bearer"):  # bare values need their key name
                _tpl, key, _vendor = g.api_key()
            parts = [("{a}", g.ipv4(), "IP_ADDRESS"), ("{b}", key, "API_KEY"), ("{c}", g.email(), "EMAIL")]
        else:
            url, cred = g.url_credentials()
            planted(
                t.replace("{a}", url),
                [("{b}", g.email(), "EMAIL"), ("{c}", g.nino(), "UK_NINO")],
                "mixed",
                "mixed",
            )
            row = rows[-1]
            start = row["text"].index(cred)
            row["spans"].append({"start": start, "end": start + len(cred), "type": "URL_CREDENTIALS"})
            if "@10.0.3.7/" in url:
                ip_at = row["text"].index("10.0.3.7")
                row["spans"].append({"start": ip_at, "end": ip_at + len("10.0.3.7"), "type": "IP_ADDRESS"})
            row["spans"].sort(key=lambda s: s["start"])
            continue
        planted(t, parts, "mixed", "mixed")

    for _ in range(200):
        name, fn = g.pick(LOOKALIKES)
        rows.append({"text": fn(g), "spans": [], "kind": "lookalike", "category": name})

    # Known-hard cases, kept so the figures show the limits rather than hide them: identifiers
    # written with no format and no context word, and look-alikes that satisfy every public rule.
    for _ in range(30):
        case = g.pick(["bare_phone", "bare_ssn", "spaced_ssn", "spelled_email", "bare_secret"])
        if case == "bare_phone":
            value = f"{g.pick(US_AREAS)}{g.r.randint(200, 999)}{g.digits(4)}"
            planted(
                g.pick(["I'm on {v} most evenings", "{v} - Dana", "new one: {v}"]),
                [("{v}", value, "PHONE")],
                "pii",
                f"hard:{case}",
            )
        elif case in ("bare_ssn", "spaced_ssn"):
            d = g.ssn().replace("-", "")
            value = d if case == "bare_ssn" else f"{d[:3]} {d[3:5]} {d[5:]}"
            planted(
                g.pick(["Applicant {v} approved", "id {v} on the form"]),
                [("{v}", value, "US_SSN")],
                "pii",
                f"hard:{case}",
            )
        elif case == "spelled_email":
            value = f"{g.pick(FIRST)} dot {g.pick(LAST)} at gmail dot com"
            planted("write to {v}", [("{v}", value, "EMAIL")], "pii", f"hard:{case}")
        else:
            value = g.chars(ALNUM, 40)
            planted("use {v} for the upload bucket", [("{v}", value, "API_KEY")], "pii", f"hard:{case}")
    for _ in range(30):
        case = g.pick(["order_16_digits", "part_number_ssn_shape", "nino_shaped_code"])
        if case == "order_16_digits":
            text = f"order number 4{g.digits(15)}"  # one in ten passes Luhn by chance
        elif case == "part_number_ssn_shape":
            text = f"part no. {g.ssn()}"
        else:
            text = f"locker code {g.nino().replace(' ', '')}"
        rows.append({"text": text, "spans": [], "kind": "lookalike", "category": f"hard:{case}"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seed", type=int, default=20250707)
    args = parser.parse_args()
    rows = make(args.seed)
    with args.out.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(json.dumps({"rows": len(rows), "out": str(args.out)}))


if __name__ == "__main__":
    main()
