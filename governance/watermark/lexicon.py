"""Meaning-preserving variant pairs: the carriers of the plaintext watermark.

Each pair is two spellings a careful editor would accept as saying exactly the same thing: US/UK
spelling, negative contractions, hyphenation, a few true synonyms, and an optional comma after a
sentence-opening adverb. Every form survives NFKC, format-character removal, whitespace collapse and
ASCII folding, which is what makes the watermark robust to those edits.

Rules that keep meaning intact:
- a form is only swapped for its partner, never for a third word;
- pairs that are only interchangeable in some grammatical positions carry a guard (see `Guard`):
  pronoun contractions need a following word ("I know who you are" must not become "who you're"),
  clause-opening words must open a clause, and `have` contractions need a participle after them;
- ambiguous contractions are left out on purpose: `'s` (is/has), `'d` (had/would), `let's`,
  `can not` (which may mean "is able not to").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Guard(enum.Enum):
    NONE = "none"
    FOLLOWED_BY_WORD = "followed_by_word"  # pronoun + auxiliary contractions
    FOLLOWED_BY_PARTICIPLE = "followed_by_participle"  # "I have been" -> "I've been", not "I've a car"
    CLAUSE_START = "clause_start"  # sentence start or after a comma: "while", "though"
    FOLLOWED_BY_NUMBER = "followed_by_number"  # "about three" / "around three", not "about a topic"
    COUNT = "count"  # "six hours" / "6 hours": before a plural noun, not after a label ("version 2 features")
    NOT_AFTER_INTENSIFIER = "not_after_intensifier"  # "nearly all" / "almost all", not "not nearly"
    SENTENCE_START_BEFORE_SUBJECT = "sentence_start_before_subject"  # optional comma after an adverb
    SERIAL_COMMA = "serial_comma"  # "A, B and C" / "A, B, and C"
    CLAUSE_COMMA = "clause_comma"  # "..., and they" / "... and they" between two clauses


@dataclass(frozen=True, slots=True)
class VariantPair:
    id: str
    forms: tuple[str, str]
    guard: Guard = Guard.NONE


def _table(text: str) -> list[tuple[str, str]]:
    """`form/partner` items separated by whitespace; `_` stands for a space inside a form."""
    out = []
    for item in text.split():
        a, b = item.replace("_", " ").split("/")
        out.append((a, b))
    return out


# Stems spelt -ize in American and -ise in (non-Oxford) British English, in every inflection below.
_IZE_STEMS = """
    apolog organ real recogn critic emphas summar priorit optim minim maxim custom standard special util
    visual memor categor character author final normal synchron personal modern mobil stabil symbol
    sympath theor general local legal capital harmon hospital ideal immun item jeopard neutral penal
    popular public rational revolution scrutin social subsid vapor vocal agon energ fantas familiar global
    industrial initial material monet natural polar privat random serial sanit token trivial western
    central commercial digit emotional equal fertil formal fossil galvan human hypnot institutional
    internal liberal magnet marginal moral motor nation oxid patron pressur radical regular ritual scandal
    sensit steril stigmat tantal terror traumat urban victim winter colon crystal dramat economic evangel
    external homogen idol lion metabol mesmer pasteur plagiar proselyt sermon solemn styl union
""".split()
_IZE_ENDINGS = _table(
    "ize/ise izes/ises ized/ised izing/ising ization/isation izations/isations izer/iser izers/isers"
)
_YZE_STEMS = "analy paraly cataly hydroly dialy".split()

# -or/-our words; in each the first "or" takes the u (col-or-ed, neighb-or-hood, dis-hon-or).
_OR_WORDS = """
    color colors colored coloring colorful colorless discolored favor favors favored favoring favorite
    favorites favorable favorably unfavorable honor honors honored honoring honorable dishonor labor
    labors labored laboring neighbor neighbors neighboring neighborhood neighborhoods neighborly behavior
    behaviors behavioral misbehavior humor humored flavor flavors flavored flavoring flavorful harbor
    harbors harbored rumor rumors rumored endeavor endeavors armor armored odor odors vigor valor savior
    parlor rancor splendor tumor tumors demeanor candor clamor fervor
""".split()

_SPELLING_AND_SYNONYMS = _table(
    """
    center/centre centers/centres centered/centred theater/theatre theaters/theatres fiber/fibre
    fibers/fibres liter/litre liters/litres caliber/calibre somber/sombre specter/spectre luster/lustre
    maneuver/manoeuvre maneuvers/manoeuvres defense/defence offense/offence pretense/pretence
    catalog/catalogue catalogs/catalogues dialog/dialogue analog/analogue traveled/travelled
    traveling/travelling traveler/traveller travelers/travellers canceled/cancelled canceling/cancelling
    labeled/labelled labeling/labelling modeled/modelled modeling/modelling fueled/fuelled
    fueling/fuelling signaled/signalled signaling/signalling totaled/totalled channeled/channelled
    leveled/levelled leveling/levelling quarreled/quarrelled tunneled/tunnelled rivaled/rivalled
    marveled/marvelled marvelous/marvellous jewelry/jewellery counselor/counsellor counselors/counsellors
    gray/grey grayish/greyish judgment/judgement judgments/judgements acknowledgment/acknowledgement
    aging/ageing plow/plough plowed/ploughed mold/mould moldy/mouldy skeptic/sceptic skeptical/sceptical
    skepticism/scepticism aluminum/aluminium pajamas/pyjamas mustache/moustache cozy/cosy fulfill/fulfil
    fulfillment/fulfilment enrollment/enrolment skillful/skilful skillfully/skilfully willful/wilful
    installment/instalment artifact/artefact artifacts/artefacts donut/doughnut donuts/doughnuts
    esthetic/aesthetic pediatric/paediatric pediatrician/paediatrician anemia/anaemia
    anesthesia/anaesthesia archeology/archaeology archeological/archaeological medieval/mediaeval
    fetus/foetus learned/learnt dreamed/dreamt burned/burnt spelled/spelt leaped/leapt spilled/spilt
    smelled/smelt kneeled/knelt spoiled/spoilt dwelled/dwelt toward/towards afterward/afterwards
    among/amongst amid/amidst email/e-mail emails/e-mails emailed/e-mailed online/on-line
    cooperate/co-operate cooperation/co-operation cooperative/co-operative coordinate/co-ordinate
    coordinated/co-ordinated coordination/co-ordination coworker/co-worker coworkers/co-workers
    nonprofit/non-profit preexisting/pre-existing reenter/re-enter reelected/re-elected percent/per_cent
    website/web_site websites/web_sites healthcare/health_care daycare/day_care check-up/checkup
    storeroom/store_room bookshelf/book_shelf for_example/for_instance in_spite_of/despite
    a_lot_of/lots_of maybe/perhaps yogurt/yoghurt kilometer/kilometre kilometers/kilometres
    centimeter/centimetre centimeters/centimetres millimeter/millimetre millimeters/millimetres
    enroll/enrol enrolls/enrols instill/instil distill/distil sulfur/sulphur airplane/aeroplane
    airplanes/aeroplanes inquiry/enquiry inquiries/enquiries math/maths kind_of/sort_of kinds_of/sorts_of
    each_other/one_another in_order_to/so_as_to start_to/begin_to starts_to/begins_to started_to/began_to
    starting_to/beginning_to long-term/long_term short-term/short_term full-time/full_time
    part-time/part_time well-known/well_known high-quality/high_quality real-time/real_time
    day-to-day/day_to_day up-to-date/up_to_date step-by-step/step_by_step face-to-face/face_to_face
    year-round/year_round decision-making/decision_making problem-solving/problem_solving
    open-source/open_source low-cost/low_cost high-level/high_level large-scale/large_scale
    small-scale/small_scale first-hand/firsthand well-being/wellbeing e-commerce/ecommerce on-site/onsite
    lifelong/life-long two-factor/two_factor after-school/after_school off-peak/off_peak
    three-season/three_season
    """
)


def _spelling_pairs() -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for stem in dict.fromkeys(_IZE_STEMS):
        pairs += [(stem + us, stem + uk) for us, uk in _IZE_ENDINGS]
    for stem in _YZE_STEMS:
        pairs += [
            (stem + us, stem + uk)
            for us, uk in (("ze", "se"), ("zes", "ses"), ("zed", "sed"), ("zing", "sing"))
        ]
    pairs += [(w, w.replace("or", "our", 1)) for w in _OR_WORDS]
    pairs += _SPELLING_AND_SYNONYMS
    unique: dict[str, tuple[str, str]] = {}
    for a, b in pairs:
        if a != b and a not in unique and b not in unique:
            unique[a] = (a, b)
    return list(unique.values())


_NEGATIONS = _table(
    """
    do_not/don't does_not/doesn't did_not/didn't is_not/isn't are_not/aren't was_not/wasn't were_not/weren't
    has_not/hasn't have_not/haven't had_not/hadn't would_not/wouldn't could_not/couldn't
    should_not/shouldn't must_not/mustn't will_not/won't cannot/can't
    """
)

_PRONOUN_AUX = _table(
    """
    i_am/i'm you_are/you're we_are/we're they_are/they're i_will/i'll you_will/you'll we_will/we'll
    they_will/they'll he_will/he'll she_will/she'll
    """
)

_PRONOUN_HAVE = [("i have", "i've"), ("you have", "you've"), ("we have", "we've"), ("they have", "they've")]

_CLAUSE_OPENERS = [("while", "whilst"), ("although", "though")]

NUMBER_WORDS = dict(
    _table(
        "two/2 three/3 four/4 five/5 six/6 seven/7 eight/8 nine/9 ten/10 eleven/11 twelve/12 fifteen/15 "
        "twenty/20 thirty/30 forty/40 fifty/50 sixty/60 ninety/90"
    )
)

_APPROXIMATELY = [("about", "around"), ("roughly", "approximately")]

# A number after one of these is a label, not a count ("version 2 features", "platform 4 trains").
LABEL_WORDS = frozenset(
    "version v chapter page pages room platform step level number no type phase stage part section figure "
    "table grade size route bus line gate floor track season episode series model mark article item "
    "question rule verse act scene class year years".split()
)

INTENSIFIERS = frozenset({"not", "very", "so", "pretty", "quite", "too"})

# Sentence-opening adverbials after which a comma is optional before a subject.
COMMA_ADVERBS = tuple(
    w.replace("_", " ")
    for w in """
    then finally eventually sometimes usually often occasionally initially originally traditionally
    typically ideally recently unfortunately fortunately luckily surprisingly interestingly consequently
    additionally meanwhile moreover furthermore later nowadays normally apparently of_course in_fact
    instead otherwise also therefore nevertheless nonetheless elsewhere in_winter in_summer in_spring
    in_autumn on_sundays on_saturdays at_night at_first in_general in_the_end after_that back_then by_then
    for_now in_short since_then until_then at_times in_practice in_theory this_time last_year next_time
    most_days on_weekends every_morning every_year
    """.split()
)

# "that" is left out: "Now that we..." must not become "Now, that we...".
SUBJECT_STARTERS = frozenset(
    "i we you he she it they the a an this these those my our your his her their its there people "
    "most many some all each every everyone nobody someone anyone".split()
)

PARTICIPLES = frozenset(
    "been got gotten done seen made had said gone come taken given known found told heard thought become "
    "brought bought kept left lost met paid put read run sent set sold spent stood taught understood won "
    "written begun chosen driven eaten fallen forgotten grown hidden ridden risen shown spoken stolen "
    "sworn thrown worn always never already just also ever only still finally "
    # irregular forms that are themselves watermark variants ("I've learnt"): without them the slot
    # would exist in one variant of the text and not in the other
    "learnt dreamt burnt spelt leapt spilt smelt knelt spoilt dwelt".split()
)


def build_pairs() -> list[VariantPair]:
    out: list[VariantPair] = []
    for a, b in _spelling_pairs():
        out.append(VariantPair(f"s:{a}", (a, b)))
    for a, b in _NEGATIONS:
        out.append(VariantPair(f"n:{a}", (a, b)))
    for a, b in _PRONOUN_AUX:
        out.append(VariantPair(f"p:{a}", (a, b), Guard.FOLLOWED_BY_WORD))
    for a, b in _PRONOUN_HAVE:
        out.append(VariantPair(f"h:{a}", (a, b), Guard.FOLLOWED_BY_PARTICIPLE))
    for a, b in _CLAUSE_OPENERS:
        out.append(VariantPair(f"c:{a}", (a, b), Guard.CLAUSE_START))
    for a, b in NUMBER_WORDS.items():
        out.append(VariantPair(f"d:{a}", (a, b), Guard.COUNT))
    for a, b in _APPROXIMATELY:
        out.append(VariantPair(f"a:{a}", (a, b), Guard.FOLLOWED_BY_NUMBER))
    out.append(VariantPair("i:nearly", ("nearly", "almost"), Guard.NOT_AFTER_INTENSIFIER))
    out.append(VariantPair("x:serial", (" and", ", and"), Guard.SERIAL_COMMA))
    out.append(VariantPair("x:clause", (" and", ", and"), Guard.CLAUSE_COMMA))
    for adverb in COMMA_ADVERBS:
        out.append(VariantPair(f"k:{adverb}", (adverb, adverb + ","), Guard.SENTENCE_START_BEFORE_SUBJECT))
    return out


PAIRS: tuple[VariantPair, ...] = tuple(build_pairs())
