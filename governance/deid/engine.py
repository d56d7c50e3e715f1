"""The analyzer: Presidio on a blank spaCy pipeline, built once per process, plus pluggable NER.

Building an `AnalyzerEngine` loads spaCy and compiles every recognizer (seconds), so one lazily built
instance serves the whole process; it is immutable after construction and Presidio's `analyze` keeps no
per-call state on it, so threads may share it.

Names, places and organisations need a statistical NER model, and spaCy models are not on PyPI, so
none ships by default. A deployment that has one registers it with `register_ner` (or names a factory
in the `MEMHUB_DEID_NER` setting, which the web layer passes to `configure_ner`); every scan then also
runs it. A plug-in is any callable `text -> iterable of Finding` (or `(start, end, type, score)`
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
    return tuple(_ner_plugins)


def configure_ner(factory_path: str | None) -> None:
    """Register the plug-in built by `module.path:factory` (the deployment's setting); None clears."""
    with _ner_lock:
        _ner_plugins.pop("configured", None)
    if not factory_path:
        return
    module_name, _, attr = factory_path.partition(":")
    if not attr:
        raise ValueError(f"NER factory must look like 'package.module:factory', got {factory_path!r}")
    factory = getattr(importlib.import_module(module_name), attr)
    register_ner("configured", factory())


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
    if _ner_plugins:
        findings.extend(
            f
            for f in _run_ner(text)
            if f.score >= min_score
            and (not entities or f.type in entities)
            and text[f.start : f.end] not in allow
        )
    return resolve_overlaps(findings)


def resolve_overlaps(findings: Iterable[Finding]) -> list[Finding]:
    kept: list[Finding] = []
    for f in sorted(findings, key=lambda f: (-f.score, -(f.end - f.start), f.start)):
        if all(f.end <= k.start or f.start >= k.end for k in kept):
            kept.append(f)
    return sorted(kept, key=lambda f: (f.start, f.end))
