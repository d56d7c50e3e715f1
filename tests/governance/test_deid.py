"""De-identification: recognizers, report, publish gate, redaction and pseudonymisation.

Plain-Python module: runs without a database (`pytest tests/governance/test_deid.py -p no:django`).
"""

from __future__ import annotations

import json

import pytest

from governance.deid import (
    EntityType,
    Finding,
    Mode,
    PiiReport,
    Pseudonymizer,
    SpacyNerPlugin,
    apply,
    apply_many,
    blocking_findings,
    configure_ner,
    register_ner,
    registered_ner,
    report,
    scan,
    unregister_ner,
    use_ner_setting,
)

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
GH_TOKEN = "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"
PEM_BODY = "\n".join(["MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB"] * 4)


def types_in(text: str) -> list[tuple[str, str]]:
    return [(f.type, text[f.start : f.end]) for f in scan(text)]


# Each recognizer: (text, the type it must find, the exact value it must report).
POSITIVES = [
    ("Send it to maria.rossi@northwind-traders.com today.", "EMAIL", "maria.rossi@northwind-traders.com"),
    ("Call the site manager on (415) 555-0199.", "PHONE", "(415) 555-0199"),
    ("Office: +44 20 7946 0958", "PHONE", "+44 20 7946 0958"),
    ("Card on file: 4539 1488 0343 6467", "CREDIT_CARD", "4539 1488 0343 6467"),
    ("Amex 3715 551234 56786 exp 04/27", "CREDIT_CARD", "3715 551234 56786"),
    ("Transfer to DE89 3704 0044 0532 0130 00 please", "IBAN", "DE89 3704 0044 0532 0130 00"),
    ("IBAN GB82WEST12345698765432", "IBAN", "GB82WEST12345698765432"),
    ("Blocked login from 8.8.4.4 at 03:12", "IP_ADDRESS", "8.8.4.4"),
    ("The gateway is 2606:4700:4700::1111.", "IP_ADDRESS", "2606:4700:4700::1111"),
    ("SSN: 536-22-8841", "US_SSN", "536-22-8841"),
    ("her social security number 536228841", "US_SSN", "536228841"),
    ("National Insurance number AB 12 34 56 C", "UK_NINO", "AB 12 34 56 C"),
    ("DATABASE_URL=postgres://app:S3cr3tPa55@db.internal/app", "URL_CREDENTIALS", "app:S3cr3tPa55"),
    ("aws_access_key_id = AKIAZ3MHV5Q2RJ7XKP4N", "API_KEY", "AKIAZ3MHV5Q2RJ7XKP4N"),
    ("GITHUB_TOKEN=" + GH_TOKEN, "API_KEY", GH_TOKEN),
    ("stripe key sk_live_51HxQ2aKf9d8s7LmNoPqRsTu", "API_KEY", "sk_live_51HxQ2aKf9d8s7LmNoPqRsTu"),
    ("sk_test_4eC39HqLyjWDarjtT1zdp7dc in staging", "API_KEY", "sk_test_4eC39HqLyjWDarjtT1zdp7dc"),
    ("SLACK_BOT_TOKEN=xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "API_KEY",
     "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"),
    ("api_key = \"a9F3kL0pQ7zX2mN8vB4cR1tY\"", "API_KEY", "a9F3kL0pQ7zX2mN8vB4cR1tY"),
    ("password: Tr0ub4dor&3", "API_KEY", "Tr0ub4dor&3"),
    (f"Authorization: Bearer {JWT}", "JWT", JWT),
    (f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----", "PRIVATE_KEY",
     f"-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----"),
]  # fmt: skip

# Look-alikes: same shape, not personal data or a live secret.
LOOKALIKES = [
    "Mail user@example.com or jane@company.test for a demo",  # RFC 2606 reserved domains
    "icon@2x.png and npm i lodash@4.17.21",
    "git@github.com:acme/robot.git",
    "Order 4155550199 shipped; ref 2024-118833; call 123-456-7890 in the template",
    "Card 4539 1488 0343 6468 was declined",  # fails Luhn
    "test card 4242 4242 4242 4242",  # published test number
    "timestamp 1700000000000",  # 13 digits, no card network starts with 1
    "IBAN DE88 3704 0044 0532 0130 00",  # wrong check digits
    "Upgraded to v2.14.1, build 10.0.19045.3693, OID 1.3.6.1.4.1.311.21.7",
    "docs use 192.0.2.10 and 2001:db8::7; bind 0.0.0.0; loopback 127.0.0.1",
    "MAC 00:1a:2b:3c:4d:5e at 12:30:45 with std::vector",
    "SSN 666-12-3456 and 900-12-3456 are never issued; ZIP 94105-1234",
    "NINO QQ 12 34 56 C is the HMRC example; AB123456E has a bad suffix",
    "postgres://user:password@localhost/db and https://deploy@github.com/acme/robot",
    "AKIAIOSFODNN7EXAMPLE is the documented key",
    "publishable key pk_live_51HxQ2aKf9d8s7LmNoPqRsTu",
    "ghp_XXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX",
    'api_key=YOUR_API_KEY_HERE; token = os.environ["API_TOKEN"]',
    'secret: ${SECRET_KEY}; password = "********"',
    "eyJhbGciOiJIUzI1NiJ9 is only a JWT header",
    f"-----BEGIN PUBLIC KEY-----\n{PEM_BODY}\n-----END PUBLIC KEY-----",
    "The file starts with -----BEGIN PRIVATE KEY----- and nothing else.",
    "commit 3f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39, request 550e8400-e29b-41d4-a716-446655440000",
    "We raised $1,250,000 in 2021 and the token expires after thirty minutes.",
]


@pytest.mark.parametrize(
    ("text", "etype", "value"), POSITIVES, ids=[f"{p[1]}-{i}" for i, p in enumerate(POSITIVES)]
)
def test_each_recognizer_finds_its_type(text: str, etype: str, value: str) -> None:
    assert (etype, value) in types_in(text)


@pytest.mark.parametrize("text", LOOKALIKES)
def test_lookalikes_are_not_reported(text: str) -> None:
    assert types_in(text) == []


def test_documentation_values_are_visible_below_the_default_threshold() -> None:
    text = "Mail user@example.com"
    assert scan(text) == []
    low = scan(text, min_score=0.0)
    assert [(f.type, f.score < 0.5) for f in low] == [("EMAIL", True)]


def test_context_words_raise_confidence() -> None:
    bare = scan("Applicant 536-22-8841 approved")[0]
    with_context = scan("SSN 536-22-8841")[0]
    assert with_context.score > bare.score >= 0.5


def test_overlapping_findings_are_reported_once_by_the_stronger_recognizer() -> None:
    findings = scan(f"Authorization: Bearer {JWT}")
    assert [f.type for f in findings] == ["JWT"]


def test_allow_list_clears_a_value_the_publisher_approved() -> None:
    text = "Support: help@northwind-traders.com, me: maria.rossi@northwind-traders.com"
    found = scan(text, allow=["help@northwind-traders.com"])
    assert [text[f.start : f.end] for f in found] == ["maria.rossi@northwind-traders.com"]


def test_findings_carry_offsets_scores_and_recognizer() -> None:
    text = "x maria.rossi@northwind-traders.com y"
    (f,) = scan(text)
    assert (f.start, f.end, f.type, f.recognizer) == (2, 35, "EMAIL", "email")
    assert 0.5 <= f.score <= 1.0
    assert Finding.from_dict(f.to_dict()) == f


# --- report and the publish gate ----------------------------------------------------------------------


def test_report_counts_per_type_and_serialises_without_the_values() -> None:
    texts = ["maria.rossi@northwind-traders.com and SSN 536-22-8841", "nothing here", "call (415) 555-0199"]
    rep = report(texts)
    assert rep.texts_scanned == 3
    assert rep.counts == {"EMAIL": 1, "US_SSN": 1, "PHONE": 1}
    assert rep.max_score["US_SSN"] >= 0.9
    assert [f.text_index for f in rep.findings] == [0, 0, 2]
    dumped = rep.to_json()
    assert "536-22-8841" not in dumped and "maria.rossi" not in dumped
    again = PiiReport.from_dict(json.loads(dumped))
    assert again.findings == rep.findings and again.counts == rep.counts


def test_blocking_findings_respects_threshold_and_resolutions() -> None:
    rep = report(["SSN 536-22-8841", "Applicant 536-22-8841 approved", "ip 10.1.2.3"])
    all_ids = {f.id for f in rep.findings}
    assert len(blocking_findings(rep, 0.5)) == 3
    assert {f.type for f in blocking_findings(rep, 0.9)} == {"US_SSN"}
    assert blocking_findings(rep, 0.5, resolved=all_ids) == []


def test_a_clean_pack_is_not_blocked() -> None:
    assert blocking_findings(report(["The shop opens at 9:00.", "Version 2.14.1 fixed it."])) == []


# --- transforms -----------------------------------------------------------------------------------------


def test_report_mode_leaves_text_unchanged() -> None:
    text = "mail maria.rossi@northwind-traders.com"
    out, found = apply(text, Mode.REPORT)
    assert out == text and len(found) == 1


def test_redact_replaces_each_finding_with_its_type() -> None:
    text = "mail maria.rossi@northwind-traders.com, SSN 536-22-8841, db postgres://app:S3cr3tPa55@db.internal/app"
    out, found = apply(text, "redact")
    assert out == "mail <EMAIL>, SSN <US_SSN>, db postgres://<URL_CREDENTIALS>@db.internal/app"
    assert scan(out) == []
    assert text[found[0].start : found[0].end] == "maria.rossi@northwind-traders.com"


def test_redacting_a_private_key_removes_the_whole_block() -> None:
    text = f"key:\n-----BEGIN PRIVATE KEY-----\n{PEM_BODY}\n-----END PRIVATE KEY-----\nend"
    out, _ = apply(text, "redact")
    assert out == "key:\n<PRIVATE_KEY>\nend"


def test_pseudonyms_are_type_shaped_and_consistent_across_a_pack() -> None:
    pack = Pseudonymizer(b"pack-key-0123456789abcdef")
    texts = [
        "Ask maria.rossi@northwind-traders.com or call (415) 555-0199.",
        "MARIA.ROSSI@northwind-traders.com confirmed; backup line +1 415 555 0199.",
        "Also cc liam.chen@gmail.com and Maria.Rossi@Northwind-Traders.com.",
    ]
    out, _ = apply_many(texts, Mode.PSEUDONYMIZE, pseudonymizer=pack)
    assert out == [
        "Ask <EMAIL_1> or call <PHONE_1>.",
        "<EMAIL_1> confirmed; backup line <PHONE_1>.",
        "Also cc <EMAIL_2> and <EMAIL_1>.",
    ]


def test_pseudonymizer_state_survives_a_round_trip_and_holds_no_values() -> None:
    key = b"pack-key-0123456789abcdef"
    first = Pseudonymizer(key)
    apply("maria.rossi@northwind-traders.com", "pseudonymize", pseudonymizer=first)
    state = json.loads(json.dumps(first.state()))
    assert "maria" not in json.dumps(state)
    next_release = Pseudonymizer(key, state)
    out, _ = apply("new: liam.chen@gmail.com, old: maria.rossi@northwind-traders.com", "pseudonymize",
                   pseudonymizer=next_release)  # fmt: skip
    assert out == "new: <EMAIL_2>, old: <EMAIL_1>"


def test_different_packs_do_not_share_numbering() -> None:
    a, b = Pseudonymizer(b"a" * 16), Pseudonymizer(b"b" * 16)
    apply("liam.chen@gmail.com", "pseudonymize", pseudonymizer=a)
    assert apply("maria.rossi@gmail.com", "pseudonymize", pseudonymizer=a)[0] == "<EMAIL_2>"
    assert apply("maria.rossi@gmail.com", "pseudonymize", pseudonymizer=b)[0] == "<EMAIL_1>"


def test_pseudonymize_without_a_pack_pseudonymizer_is_an_error() -> None:
    with pytest.raises(ValueError, match="Pseudonymizer"):
        apply("maria.rossi@gmail.com", "pseudonymize")


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ValueError):
        apply("x", "shred")


def test_short_pseudonymizer_key_is_rejected() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        Pseudonymizer(b"short")


# --- pluggable NER ---------------------------------------------------------------------------------------


@pytest.fixture
def ruler_ner():
    """A real spaCy pipeline with a rule-based entity component stands in for a statistical NER model."""
    import spacy

    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns(
        [{"label": "PERSON", "pattern": "Ada Lovelace"}, {"label": "GPE", "pattern": "London"}]
    )
    register_ner("ruler", SpacyNerPlugin(nlp))
    yield
    unregister_ner("ruler")


@pytest.fixture
def no_default_ner():
    """Only the plug-ins a test registers itself (the default NER is pinned off meanwhile)."""
    configure_ner(None)
    yield
    use_ner_setting()


def test_the_default_ner_is_configured_and_finds_names_and_places() -> None:
    assert registered_ner() == ("configured",)
    assert types_in("Ada Lovelace lived in London.") == [("PERSON", "Ada Lovelace"), ("LOCATION", "London")]


def test_without_ner_names_and_places_are_not_found(no_default_ner: None) -> None:
    assert registered_ner() == ()
    assert scan("Ada Lovelace lived in London.") == []


def test_registered_ner_plugin_findings_join_the_scan(no_default_ner: None, ruler_ner: None) -> None:
    text = "Ada Lovelace lived in London; mail ada@analytical-engines.co.uk"
    assert types_in(text) == [("PERSON", "Ada Lovelace"), ("LOCATION", "London"),
                              ("EMAIL", "ada@analytical-engines.co.uk")]  # fmt: skip
    out, _ = apply(text, "redact")
    assert out == "<PERSON> lived in <LOCATION>; mail <EMAIL>"


def test_callable_plugins_may_return_tuples(no_default_ner: None) -> None:
    register_ner("tuples", lambda text: [(0, 3, "PERSON", 0.9)] if text.startswith("Bob") else [])
    try:
        assert types_in("Bob was here") == [("PERSON", "Bob")]
    finally:
        unregister_ner("tuples")


def test_configure_ner_rejects_a_malformed_factory_path(no_default_ner: None) -> None:
    with pytest.raises(ValueError, match=r"package\.module:factory"):
        configure_ner("not_a_path")
    configure_ner(None)
    assert registered_ner() == ()


def test_entity_type_names_are_stable() -> None:
    # Stored reports and pseudonym states depend on these names.
    assert [t.value for t in EntityType] == [
        "EMAIL", "PHONE", "CREDIT_CARD", "IBAN", "IP_ADDRESS", "US_SSN", "UK_NINO", "URL_CREDENTIALS",
        "API_KEY", "JWT", "PRIVATE_KEY",
    ]  # fmt: skip
