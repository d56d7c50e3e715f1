"""The analyzer: Presidio on a blank spaCy pipeline, built once per process, plus pluggable NER.

Building an `AnalyzerEngine` loads spaCy and compiles every recognizer (seconds), so one lazily built
instance serves the whole process; it is immutable after construction and Presidio's `analyze` keeps no
per-call state on it, so threads may share it.

Names and places need a statistical NER model. The default is spaCy's `en_core_web_sm` from PyPI
(`governance.deid.ner`), named by the `MEMHUB_DEID_NER` setting (`package.module:factory`; empty turns
NER off). The setting is read on the first scan, and the model loads on the first scan too, so
configuring costs nothing in a process that never scans (the web process: scans run in the worker).
Code may also pin a configuration with `configure_ner` or add plug-ins with `register_ner`; every scan
runs all of them. A plug-in is any callable `text -> iterable of Finding` (or `(start, end, type, score)`
tuples), or a Presidio `EntityRecognizer`.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from governance.deid.types import Finding

DEFAULT_MIN_SCORE = 0.5

_lock = threading.Lock()
_analyzer: Any = None  # presidio_analyzer.AnalyzerEngine, imported lazily: presidio pulls in spaCy
_no_tokens: Any = None  # NlpArtifacts of an empty document, shared read-only by every scan


def get_analyzer() -> Any:
    """The process-wide `AnalyzerEngine`, built on first use."""
    global _analyzer, _no_tokens
    if _analyzer is None:
        with _lock:
            if _analyzer is None:
                from presidio_analyzer.nlp_engine import NlpArtifacts

                engine = _build_analyzer()
                empty = engine.nlp_engine.get_nlp("en").make_doc("")
                _no_tokens = NlpArtifacts(
                    entities=[],
                    tokens=empty,
                    tokens_indices=[],
                    lemmas=[],
                    nlp_engine=engine.nlp_engine,
                    language="en",
                )
                _analyzer = engine
    return _analyzer


def _build_analyzer() -> Any:
    import spacy
    from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
    from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    from governance.deid.recognizers import default_recognizers

    class BlankSpacyNlpEngine(SpacyNlpEngine):
        """Tokenisation only: `spacy.blank` needs no model download."""

        def load(self) -> None:
            nlp = spacy.blank("en")
            nlp.max_length = 20_000_000  # tokenising only; no parser memory to guard
            self.nlp = {"en": nlp}  # type: ignore[assignment]  # the parent declares None until load()

    class NoContextEnhancer(ContextAwareEnhancer):
        """Presidio's enhancer matches lemmas, which a blank pipeline does not produce; our
        recognizers read their own context words instead."""

        def __init__(self) -> None:
            super().__init__(0.0, 0.0, 0, 0)

        def enhance_using_context(self, text, raw_results, nlp_artifacts, recognizers, context=None):  # type: ignore[no-untyped-def]
            return raw_results

    registry = RecognizerRegistry(recognizers=default_recognizers(), supported_languages=["en"])
    return AnalyzerEngine(
        registry=registry,
        nlp_engine=BlankSpacyNlpEngine(models=[{"lang_code": "en", "model_name": "blank"}]),
        supported_languages=["en"],
        context_aware_enhancer=NoContextEnhancer(),
    )


# --- pluggable NER ----------------------------------------------------------------------------------


@runtime_checkable
class PresidioLike(Protocol):
    name: str

    def analyze(self, text: str, entities: list[str], nlp_artifacts: Any = None) -> list[Any]: ...


NerPlugin = Callable[[str], Iterable[Finding | tuple[int, int, str, float]]] | PresidioLike

_ner_plugins: dict[str, NerPlugin] = {}
_ner_lock = threading.Lock()


def register_ner(name: str, plugin: NerPlugin) -> None:
    """Add (or replace) a named NER plug-in; every later scan runs it."""
    with _ner_lock:
        _ner_plugins[name] = plugin


def unregister_ner(name: str) -> None:
    with _ner_lock:
        _ner_plugins.pop(name, None)


def registered_ner() -> tuple[str, ...]:
    """Names of the plug-ins every scan runs (the configured one is called `configured`)."""
    _ensure_configured()
    return tuple(_ner_plugins)


DEFAULT_NER = "governance.deid.ner:default_ner"
_UNSET = object()
_applied: object = _UNSET  # the factory path in force: from the setting, or pinned by configure_ner
_pinned = False
_built: dict[str, NerPlugin] = {}


def ner_setting() -> str:
    """`MEMHUB_DEID_NER` when Django is configured (empty: off), otherwise the default factory."""
    try:
        from django.conf import settings
    except ImportError:  # pragma: no cover - plain-Python use without Django installed
        return DEFAULT_NER
    if not settings.configured:
        return DEFAULT_NER
    return str(getattr(settings, "MEMHUB_DEID_NER", DEFAULT_NER) or "")


def configure_ner(factory_path: str | None) -> None:
    """Pin the configured plug-in to the one built by `module.path:factory` (None or "" turns it off),
    overriding the setting until `use_ner_setting()`."""
    global _pinned
    _apply(factory_path or "")
    _pinned = True


def use_ner_setting() -> None:
    """Drop a configuration pinned by `configure_ner`; the setting applies again from the next scan."""
    global _pinned, _applied
    with _ner_lock:
        _pinned = False
        _applied = _UNSET


def _apply(factory_path: str) -> None:
    global _applied
    plugin: NerPlugin | None = None
    if factory_path:
        module_name, _, attr = factory_path.partition(":")
        if not attr or not module_name:
            raise ValueError(f"NER factory must look like 'package.module:factory', got {factory_path!r}")
        # The factory should be cheap (the default returns a plug-in that loads its model on first use);
        # its plug-in is kept, so switching the setting back does not load the model again.
        plugin = _built.get(factory_path)
        if plugin is None:
            plugin = _built.setdefault(factory_path, getattr(importlib.import_module(module_name), attr)())
    with _ner_lock:
        _ner_plugins.pop("configured", None)
        if plugin is not None:
            _ner_plugins["configured"] = plugin
        _applied = factory_path


def _ensure_configured() -> None:
    """Follow the setting (it may change at run time, in tests) unless code pinned a configuration."""
    if _pinned:
        return
    wanted = ner_setting()
    if _applied != wanted:
        _apply(wanted)


class SpacyNerPlugin:
    """Adapts a spaCy pipeline with an `ner` (or `entity_ruler`) component to the plug-in interface."""

    LABELS = {
        "PERSON": "PERSON",
        "PER": "PERSON",
        "GPE": "LOCATION",
        "LOC": "LOCATION",
        "FAC": "LOCATION",
        "ORG": "ORGANIZATION",
        "NORP": "NRP",
    }

    def __init__(self, nlp: Any, *, labels: dict[str, str] | None = None, score: float = 0.85) -> None:
        self.nlp = nlp
        self.labels = labels if labels is not None else self.LABELS
        self.score = score

    @classmethod
    def from_path(cls, path: str, **kwargs: Any) -> SpacyNerPlugin:
        import spacy

        return cls(spacy.load(path), **kwargs)

    def __call__(self, text: str) -> list[Finding]:
        doc = self.nlp(text)
        return [
            Finding(ent.start_char, ent.end_char, self.labels[ent.label_], self.score, f"ner:{ent.label_}")
            for ent in doc.ents
            if ent.label_ in self.labels
        ]


def _run_ner(text: str) -> list[Finding]:
    findings: list[Finding] = []
    for name, plugin in list(_ner_plugins.items()):
        if isinstance(plugin, PresidioLike):
            artifacts = get_analyzer().nlp_engine.process_text(text, "en")
            for r in plugin.analyze(text, [], artifacts):
                findings.append(Finding(r.start, r.end, r.entity_type, float(r.score), f"ner:{name}"))
            continue
        for item in plugin(text):
            if isinstance(item, Finding):
                findings.append(item)
            else:
                start, end, etype, score = item
                findings.append(Finding(int(start), int(end), str(etype), float(score), f"ner:{name}"))
    return findings


# --- scanning -----------------------------------------------------------------------------------------


def scan(
    text: str,
    *,
    min_score: float = DEFAULT_MIN_SCORE,
    entities: Sequence[str] | None = None,
    allow: Sequence[str] = (),
) -> list[Finding]:
    """Findings in `text`, sorted by position, without overlaps.

    `allow` holds exact values the publisher has cleared (a public support address, say).
    Where two findings overlap, the higher score wins, then the longer span: a JWT inside a
    `Bearer` header is reported once, as a JWT.
    """
    if not text:
        return []
    analyzer = get_analyzer()
    results = analyzer.analyze(
        text=text,
        language="en",
        entities=list(entities) if entities else None,
        score_threshold=min_score,
        allow_list=list(allow) or None,
        # The built-in recognizers read characters, not tokens, and spaCy's tokenizer is quadratic on
        # some pathological inputs (a 40 kB run of "a_a_..."), so scans skip tokenisation.
        nlp_artifacts=_no_tokens,
    )
    findings = [
        Finding(
            start=r.start,
            end=r.end,
            type=r.entity_type,
            score=round(float(r.score), 4),
            recognizer=str(r.recognition_metadata.get("recognizer_name", "")),
        )
        for r in results
    ]
    _ensure_configured()
    if _ner_plugins:
        # A statistical tagger sees "Applicant 664-65-4382" as a name; the rule-based recognizers know
        # the number is an SSN. Where they disagree the specific recognizer wins, whatever the scores.
        structured = list(findings)
        findings.extend(
            f
            for f in _run_ner(text)
            if f.score >= min_score
            and (not entities or f.type in entities)
            and text[f.start : f.end] not in allow
            and all(f.end <= s.start or f.start >= s.end for s in structured)
        )
    return resolve_overlaps(findings)


def resolve_overlaps(findings: Iterable[Finding]) -> list[Finding]:
    kept: list[Finding] = []
    for f in sorted(findings, key=lambda f: (-f.score, -(f.end - f.start), f.start)):
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: (f.start, f.end))
