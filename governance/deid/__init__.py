"""De-identification: find personal data and secrets in memory text; report, redact or pseudonymise.

Plain Python (no Django models), so the publish path, export and MIP transfer can all call it:

    findings = scan(text)                         # list[Finding(start, end, type, score, recognizer)]
    rep = report(texts)                           # PiiReport, .to_json()
    if blocking_findings(rep, threshold): refuse  # publish gate
    new_text, findings = apply(text, "pseudonymize", pseudonymizer=Pseudonymizer(pack_key))

Presidio, spaCy and the NER model (`MEMHUB_DEID_NER`, default `governance.deid.ner:default_ner`: names
and places) load on first use, not at import.
"""

from governance.deid.engine import (
    DEFAULT_MIN_SCORE,
    DEFAULT_NER,
    SpacyNerPlugin,
    configure_ner,
    get_analyzer,
    ner_setting,
    register_ner,
    registered_ner,
    resolve_overlaps,
    scan,
    unregister_ner,
    use_ner_setting,
)
from governance.deid.report import (
    DEFAULT_BLOCKING_THRESHOLD,
    PiiReport,
    ReportFinding,
    blocking_findings,
    mask,
    report,
)
from governance.deid.transform import Pseudonymizer, apply, apply_many, normalise_value
from governance.deid.types import BUILTIN_TYPES, EntityType, Finding, Mode

__all__ = [
    "BUILTIN_TYPES",
    "DEFAULT_BLOCKING_THRESHOLD",
    "DEFAULT_MIN_SCORE",
    "DEFAULT_NER",
    "EntityType",
    "Finding",
    "Mode",
    "PiiReport",
    "Pseudonymizer",
    "ReportFinding",
    "SpacyNerPlugin",
    "apply",
    "apply_many",
    "blocking_findings",
    "configure_ner",
    "get_analyzer",
    "mask",
    "ner_setting",
    "normalise_value",
    "register_ner",
    "registered_ner",
    "report",
    "resolve_overlaps",
    "scan",
    "unregister_ner",
    "use_ner_setting",
]
