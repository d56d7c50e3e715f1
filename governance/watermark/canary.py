"""Canary memories: a few keyed, innocent-looking synthetic memories per installation.

Each installation receives `count` extra memories drawn from a large keyed space (one template and
eight or so fields, 10^10 to 10^11 combinations per template). They read like ordinary notes, name
nothing real and answer no question a user would ask, so they do not disturb retrieval; if one shows
up in leaked text, it names the installation it was issued to.

Why the p-value is honest: an innocent installation's canaries are keyed draws that the leaked text
cannot depend on, so the chance that any of its `count` canaries equals any of the `F` canary-shaped
sentences found in the text is at most `count * F / M` (union bound), `M` being the smallest template
space.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import re
from dataclasses import dataclass

from governance.watermark.keys import DOMAIN, _check_key
from governance.watermark.normalize import WHITESPACE_RE, fold


def _words(text: str) -> tuple[str, ...]:
    """Whitespace-separated entries; `_` stands for a space inside an entry."""
    return tuple(w.replace("_", " ") for w in text.split())


NAMES = _words(
    """
    Abel Bianca Cormac Delphine Emeka Farida Gideon Halvard Ines Jovan Kalani Leopold Marisol
    Nikolai Odalys Pieter Quilla Rosalind Soren Tamsin Ulrich Valentina Wendell Ximena Yusuf Zelda
    Anselm Beatrix Cassius Dagny Ezra Florentyna Gwendolyn Horatio Imogen Jasper Kestrel Ludovica
    Mordecai Niamh
    """
)
ITEMS = _words(
    """
    kettle lantern toolbox ladder thermos sewing_kit flashlight padlock rain_jacket garden_hose
    extension_cord first-aid_kit bicycle_pump picnic_blanket tape_measure spirit_level stepladder
    umbrella doorstop fan_heater watering_can chess_set camping_stove fishing_rod hand_drill
    coil_of_rope compass binoculars wheelbarrow skillet teapot clipboard
    """
)
PLACES = _words(
    """
    boathouse allotment village_hall workshop greenhouse chapel_annex ferry_office library_basement
    climbing_gym pottery_studio bakery cabin garage attic community_garden print_shop observatory
    bike_shed orchard cellar marina tram_depot fire_station recording_studio band_room tennis_club
    mill_house ski_lodge fish_market flower_stall
    """
)
CONTAINERS = _words(
    """
    blue_crate tin_box canvas_bag oak_chest plastic_tub wicker_basket metal_locker bottom_drawer
    shoebox tall_cupboard tool_bag old_suitcase hatbox footlocker biscuit_tin laundry_bag
    filing_cabinet hamper satchel pine_crate
    """
)
ADJECTIVES = _words(
    """
    brass copper green old folding striped battered enamel wooden heavy small orange silver tall
    narrow dented polished spare vintage red square round chipped waxed
    """
)
DISHES = _words(
    """
    lentil_soup rye_bread plum_cake apple_crumble barley_stew seed_loaf potato_salad onion_tart
    pumpkin_pie fish_pie oat_biscuits corn_fritters pea_soup carrot_cake bean_chili mushroom_risotto
    leek_pie walnut_bread rice_pudding pear_tart herb_scones tomato_soup cheese_straws ginger_loaf
    """
)
FOODS = _words(
    """
    honey sharp_cheddar pickled_onions brown_butter sour_cream toasted_seeds crusty_bread
    green_salad poached_eggs apple_sauce fresh_ricotta roast_parsnips black_tea cider
    soft_goat_cheese chutney
    """
)
SPICES = _words(
    """
    nutmeg cumin paprika cinnamon fennel_seed black_pepper allspice sumac smoked_salt dried_thyme
    caraway coriander mace cardamom chili_flakes clove
    """
)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = _words(
    """
    January February March April May June July August September October November December
    """
)
LETTERS = tuple("ABCDEFGH")
DAYS = tuple(str(n) for n in range(3, 31))
SHELVES = tuple(str(n) for n in range(1, 41))

FIELDS: dict[str, tuple[str, ...]] = {
    "name": NAMES, "name2": NAMES, "item": ITEMS, "item2": ITEMS, "place": PLACES, "container": CONTAINERS,
    "adj": ADJECTIVES, "dish": DISHES, "food": FOODS, "spice": SPICES, "weekday": WEEKDAYS, "month": MONTHS,
    "letter": LETTERS, "days": DAYS, "shelf": SHELVES,
}  # fmt: skip

TEMPLATES = (
    "{name} keeps the spare {item} for the {place} in the {container} next to the {item2}; "
    "{name2} last checked it on a {weekday} in {month}.",
    "Note from {name}: at the {place}, the {adj} {item} should be cleaned on day {days} of every month, "
    "and the {item2} goes back on shelf {letter}{shelf}.",
    "{name} said the {dish} from the {place} goes well with {food} and a pinch of {spice}, "
    "as {name2} suggested one {weekday} in {month}.",
)

_FIELD_RE = re.compile(r"\{(\w+)\}")


def template_space(template: str) -> int:
    return math.prod(len(FIELDS[f]) for f in _FIELD_RE.findall(template))


MIN_SPACE = min(template_space(t) for t in TEMPLATES)


@dataclass(frozen=True, slots=True)
class Canary:
    template: int
    fields: tuple[str, ...]
    text: str


def _stream(key: bytes, installation_id: str, index: int) -> bytes:
    seed = hmac.new(
        key, DOMAIN + b"/canary/" + installation_id.encode() + b"/" + str(index).encode(), hashlib.sha256
    ).digest()
    return hashlib.shake_256(seed).digest(8 * 32)


def _make(key: bytes, installation_id: str, index: int) -> Canary:
    stream = _stream(key, installation_id, index)
    draws = (int.from_bytes(stream[i : i + 8], "little") for i in range(0, len(stream), 8))
    t = next(draws) % len(TEMPLATES)
    template = TEMPLATES[t]
    names = _FIELD_RE.findall(template)
    values = tuple(FIELDS[n][next(draws) % len(FIELDS[n])] for n in names)
    return Canary(t, values, template.format(**dict(zip(names, values, strict=True))))


@functools.lru_cache(maxsize=65536)
def canaries_for(key: bytes, installation_id: str, count: int) -> tuple[Canary, ...]:
    _check_key(key)
    out: list[Canary] = []
    index = 0
    while len(out) < count:  # distinct within an installation
        c = _make(key, installation_id, index)
        index += 1
        if all(c.fields != o.fields or c.template != o.template for o in out):
            out.append(c)
    return tuple(out)


def canary_memories(*, key: bytes, installation_id: str, count: int = 3) -> list[str]:
    """The texts to add to the installation as ordinary memories (order them like any other)."""
    return [c.text for c in canaries_for(key, installation_id, count)]


def _field_pattern(name: str) -> str:
    options = sorted((re.escape(fold(v)) for v in FIELDS[name]), key=len, reverse=True)
    return f"(?P<{name}>{'|'.join(options)})"


def _template_regex(template: str) -> re.Pattern[str]:
    parts = []
    pos = 0
    for m in _FIELD_RE.finditer(template):
        literal = fold(template[pos : m.start()])
        parts.append(re.escape(literal).replace(r"\ ", r"\s+"))
        parts.append(_field_pattern(m.group(1)))
        pos = m.end()
    # the closing full stop is optional: an excerpt or a list may drop it
    parts.append(re.escape(fold(template[pos:]).rstrip(".")).replace(r"\ ", r"\s+"))
    return re.compile("".join(parts))


_TEMPLATE_RES = tuple(_template_regex(t) for t in TEMPLATES)
_VALUE_INDEX = {name: {fold(v): v for v in values} for name, values in FIELDS.items()}


def find_canary_shapes(text: str) -> list[tuple[int, tuple[str, ...]]]:
    """Every canary-shaped sentence in `text`, as (template, field values), after normalisation."""
    normal = WHITESPACE_RE.sub(" ", fold(text))
    found = []
    for t, regex in enumerate(_TEMPLATE_RES):
        names = _FIELD_RE.findall(TEMPLATES[t])
        for m in regex.finditer(normal):
            found.append((t, tuple(_VALUE_INDEX[n][m.group(n)] for n in names)))
    return found
