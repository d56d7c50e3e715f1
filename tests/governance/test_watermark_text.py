"""Plaintext watermark: embed/detect round trip, attacks, excerpts, canaries, false accusation.

No database: `pytest tests/governance/test_watermark_text.py -p no:django --noconftest`.
"""

from __future__ import annotations

import importlib.util
import random
import re
import unicodedata
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from governance.watermark import (
    canary_memories,
    capacity,
    detect_text,
    kv_build_text,
    pack_vocabulary,
    watermark_text,
    watermark_texts,
)
from governance.watermark.attacks import ATTACKS, excerpt, remove_format_chars
from governance.watermark.canary import FALLBACK_NOUNS, canary_p_value, find_canary_shapes
from governance.watermark.kv import attribute_kv_cache
from governance.watermark.text import ZW_CHARS, find_slots, observe

KEY = b"test-watermark-key-0123456789abc"
CANDIDATES = [f"installation-{i:03d}" for i in range(200)]
ROOT = Path(__file__).resolve().parents[2]


@cache
def pack() -> tuple[str, ...]:
    """The bench's realistic pack (35 memories, ~2,900 words), loaded from its file."""
    spec = importlib.util.spec_from_file_location("watermark_eval", ROOT / "bench" / "watermark_eval.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return tuple(module.PACK_MEMORIES)


@cache
def vocabulary() -> tuple[str, ...]:
    return pack_vocabulary(pack())


def installed_copy(installation_id: str, *, canaries: bool = True) -> str:
    memories = watermark_texts(pack(), key=KEY, installation_id=installation_id)
    if canaries:
        memories += canary_memories(key=KEY, installation_id=installation_id, vocabulary=vocabulary())
    random.Random(installation_id).shuffle(memories)
    return "\n".join(memories)


def visible(text: str) -> str:
    return "".join(ch for ch in text if ch not in ZW_CHARS)


# --- embedding ------------------------------------------------------------------------------------------


def test_copies_are_deterministic_per_installation_and_differ_between_installations() -> None:
    a1 = watermark_text(pack()[0], key=KEY, installation_id="a")
    a2 = watermark_text(pack()[0], key=KEY, installation_id="a")
    b = watermark_text(pack()[0], key=KEY, installation_id="b")
    assert a1 == a2
    assert a1 != b


def test_only_listed_variants_change_and_case_is_kept() -> None:
    text = "Do not panic. The color of the center is gray. I am sure they are right. We cannot wait."
    seen: set[str] = set()
    for i in range(40):
        marked = visible(watermark_text(text, key=KEY, installation_id=f"case-{i}"))
        seen.add(marked)
        assert marked.split(" ", 1)[0] in ("Do", "Don't")  # sentence case survives the swap
        allowed = set(
            "do not don't panic the color colour of center centre is gray grey i am i'm sure they are "
            "they're right we cannot can't wait".split()
        )
        assert {w.strip(".,").lower() for w in marked.split()} <= allowed
    assert len(seen) > 10


def test_punctuation_carriers_toggle_and_nothing_else_changes() -> None:
    text = "Usually the shop opens early. We bought apples, pears and plums."
    seen = {visible(watermark_text(text, key=KEY, installation_id=f"p-{i}")) for i in range(40)}
    assert seen == {
        "Usually the shop opens early. We bought apples, pears and plums.",
        "Usually, the shop opens early. We bought apples, pears and plums.",
        "Usually the shop opens early. We bought apples, pears, and plums.",
        "Usually, the shop opens early. We bought apples, pears, and plums.",
    }


@pytest.mark.parametrize(
    ("text", "never"),
    [
        ("I know who you are.", "you're"),  # no contraction at the end of a clause
        ("Now that we know, let us go.", "Now,"),  # no comma after "Now" before "that"
        ("It was not nearly enough.", "almost"),  # "not nearly" is not "not almost"
        ("See version 2 features and platform 4 trains.", "two"),  # labels, not counts
        ("Press two thirds of the dough into a tin.", "2 thirds"),  # fractions stay words
        ("For a while it rained.", "whilst"),  # "while" as a noun is not a clause opener
        ("He said it's fine and she'd agree.", "it is"),  # ambiguous contractions are never carriers
    ],
)
def test_guarded_positions_are_left_alone(text: str, never: str) -> None:
    for i in range(24):
        assert never not in visible(watermark_text(text, key=KEY, installation_id=f"guard-{i}"))


def test_curly_apostrophes_stay_curly() -> None:
    text = "We don\u2019t mind, and they aren\u2019t late."
    marked = {visible(watermark_text(text, key=KEY, installation_id=f"q-{i}")) for i in range(20)}
    assert any("\u2019" in m for m in marked)
    assert not any("'" in m for m in marked)


def test_zero_width_layer_is_invisible_and_optional() -> None:
    text = pack()[3]
    with_zw = watermark_text(text, key=KEY, installation_id="zw")
    without = watermark_text(text, key=KEY, installation_id="zw", zero_width=False)
    assert any(ch in with_zw for ch in ZW_CHARS)
    assert all(unicodedata.category(ch) == "Cf" for ch in set(with_zw) - set(without))
    assert remove_format_chars(with_zw) == without


def test_pack_has_enough_carriers() -> None:
    cap = capacity("\n".join(pack()), key=KEY)
    assert cap["lexical_slots"] >= 100  # about one per 25 words in ordinary prose
    assert cap["zero_width_slots"] >= 200


# --- detection --------------------------------------------------------------------------------------------


def test_round_trip_attributes_the_installation() -> None:
    leaked = installed_copy("installation-042")
    result = detect_text(leaked, key=KEY, candidates=CANDIDATES)
    assert result.installation_id == "installation-042"
    assert result.matches == result.slots  # every carrier agrees with the true installation
    assert result.adjusted_p_value < 1e-20
    assert result.layers["canary"]["hits"] == 1
    assert result.to_dict()["installation_id"] == "installation-042"


@pytest.mark.parametrize("attack", sorted(set(ATTACKS) - {"none"}))
def test_each_attack_still_attributes(attack: str) -> None:
    rng = random.Random(attack)
    for leaker in ("installation-007", "installation-123", "installation-199"):
        leaked = ATTACKS[attack](installed_copy(leaker), rng)
        result = detect_text(leaked, key=KEY, candidates=CANDIDATES)
        assert result.installation_id == leaker, (attack, result.to_dict())


def test_a_30_percent_excerpt_attributes_on_lexical_variants_alone() -> None:
    rng = random.Random(30)
    for leaker in CANDIDATES[:10]:
        leaked = excerpt(remove_format_chars(installed_copy(leaker, canaries=False)), rng, 0.3)
        result = detect_text(leaked, key=KEY, candidates=CANDIDATES, use_zero_width=False, canaries=0)
        assert result.installation_id == leaker
        assert result.layers["zero_width"]["slots"] == 0


def test_excerpt_slots_keep_their_names() -> None:
    full = visible(installed_copy("installation-001", canaries=False))
    part = excerpt(full, random.Random(5), 0.3)
    full_keys = set(observe(full, key=KEY).lexical_keys)
    part_keys = set(observe(part, key=KEY).lexical_keys)
    # only slots whose context was cut by the excerpt's two edges may be new
    assert len(part_keys - full_keys) <= 2
    assert len(part_keys & full_keys) >= 20


def test_unmarked_text_accuses_nobody() -> None:
    original = "\n".join(pack())
    for text in (original, excerpt(original, random.Random(1), 0.3)):
        result = detect_text(text, key=KEY, candidates=CANDIDATES)
        assert result.installation_id is None
        assert result.adjusted_p_value > 1e-4


def test_leak_from_an_unlisted_installation_accuses_none_of_the_listed() -> None:
    leaked = installed_copy("someone-else")
    result = detect_text(leaked, key=KEY, candidates=CANDIDATES)
    assert result.installation_id is None
    assert 0.3 < result.score < 0.7  # innocent candidates agree about half the time


def test_wrong_key_detects_nothing() -> None:
    leaked = installed_copy("installation-010")
    result = detect_text(leaked, key=b"some-other-instance-key-01234567", candidates=CANDIDATES)
    assert result.installation_id is None


def test_p_values_are_calibrated_for_innocent_candidates() -> None:
    # Under the null the best of 200 innocent candidates must rarely look significant, and their
    # agreement fractions must centre on one half.
    leaked = observe(installed_copy("not-a-candidate", canaries=False), key=KEY)
    result = detect_text("", key=KEY, candidates=CANDIDATES, observation=leaked)
    assert result.installation_id is None
    assert result.adjusted_p_value > 1e-3
    scores = [r.score for r in result.ranking]
    assert max(scores) < 0.75


def test_canary_memories_are_stable_distinct_and_identify_on_their_own() -> None:
    mine = canary_memories(key=KEY, installation_id="installation-050")
    assert mine == canary_memories(key=KEY, installation_id="installation-050")
    assert len(mine) == 3 and len(set(mine)) == 3
    assert not set(mine) & set(canary_memories(key=KEY, installation_id="installation-051"))
    leaked = "Some notes we found online.\n" + mine[1] + "\nThe end."
    result = detect_text(leaked, key=KEY, candidates=CANDIDATES)
    assert result.installation_id == "installation-050"
    assert result.layers["canary"]["hits"] == 1
    # canary text does not depend on formatting: folding and case still match
    shouted = unicodedata.normalize("NFKC", mine[0].upper())
    assert detect_text(shouted, key=KEY, candidates=CANDIDATES).installation_id == "installation-050"


def test_canaries_are_written_in_the_packs_own_nouns_and_name_their_installation() -> None:
    vocab = set(vocabulary())
    assert len(vocab) > 100 and vocab <= set(re.findall(r"[a-z-]+", " ".join(pack()).lower()))
    for i in range(20):
        for memory in canary_memories(
            key=KEY, installation_id=f"installation-{i:03d}", vocabulary=vocabulary()
        ):
            [(_frame, words)] = find_canary_shapes(memory)
            assert set(words) <= vocab and len(set(words)) == 6
    leaked = canary_memories(key=KEY, installation_id="installation-007", vocabulary=vocabulary())[2]
    result = detect_text(leaked, key=KEY, candidates=CANDIDATES)
    assert result.installation_id == "installation-007" and result.layers["canary"]["hits"] == 1


def test_one_installations_canaries_are_no_evidence_against_another() -> None:
    worst = 1.0
    for i in range(40):
        leaked = "\n".join(canary_memories(key=KEY, installation_id=f"leaker-{i}", vocabulary=vocabulary()))
        shapes = find_canary_shapes(leaked)
        assert canary_p_value(KEY, f"leaker-{i}", 3, shapes)[0] < 1e-6
        worst = min(worst, *(canary_p_value(KEY, c, 3, shapes)[0] for c in CANDIDATES))
        result = detect_text(leaked, key=KEY, candidates=[*CANDIDATES, f"leaker-{i}"])
        assert result.installation_id == f"leaker-{i}"
    # 8,000 innocent comparisons: p-values behave like p-values, none near an accusation
    assert 1e-6 < worst and worst * 2 * len(CANDIDATES) > 1e-4


def test_small_packs_fall_back_to_everyday_nouns() -> None:
    words = pack_vocabulary(["Tip one.", "Tip two."])
    assert len(words) > 150 and set(words) <= set(FALLBACK_NOUNS)
    canary = canary_memories(key=KEY, installation_id="tiny", vocabulary=words)[0]
    assert detect_text(canary, key=KEY, candidates=[*CANDIDATES, "tiny"]).installation_id == "tiny"


def test_canaries_contain_no_watermark_carriers() -> None:
    # a carrier inside a canary would make the canary's wording depend on the lexical layer
    for i in range(50):
        for memory in canary_memories(key=KEY, installation_id=f"c{i}", vocabulary=vocabulary()):
            assert find_slots(memory) == []
        for memory in canary_memories(key=KEY, installation_id=f"c{i}"):
            assert find_slots(memory) == []


def test_short_keys_are_rejected() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        watermark_text("Do not panic.", key=b"short", installation_id="a")


def test_empty_text_is_returned_unchanged_and_detects_nothing() -> None:
    assert watermark_text("", key=KEY, installation_id="a") == ""
    result = detect_text("", key=KEY, candidates=CANDIDATES)
    assert result.slots == 0 and result.installation_id is None


# --- KV caches --------------------------------------------------------------------------------------------


def test_kv_text_is_the_lexically_marked_text_without_invisible_characters() -> None:
    text = pack()[10]
    kv = kv_build_text(text, key=KEY, installation_id="installation-003")
    assert kv == watermark_text(text, key=KEY, installation_id="installation-003", zero_width=False)
    assert not any(ch in kv for ch in ZW_CHARS)
    assert detect_text(kv, key=KEY, candidates=CANDIDATES[:50]).best_candidate == "installation-003"


def test_kv_cache_is_attributed_by_recomputation() -> None:
    text = " ".join(pack()[10:14])

    def recompute(t: str) -> list[np.ndarray]:
        # stands in for a model: a deterministic function of the exact text (and so of its tokens)
        codes = np.frombuffer(t.encode(), dtype=np.uint8).astype(np.float32)
        return [codes[None, :], np.cumsum(codes)[None, :] / 1000.0]

    leaked = recompute(kv_build_text(text, key=KEY, installation_id="installation-077"))
    found = attribute_kv_cache(leaked, text=text, key=KEY, candidates=CANDIDATES[:100], recompute=recompute)
    assert found == "installation-077"
    stranger = recompute(kv_build_text(text, key=KEY, installation_id="stranger"))
    assert (
        attribute_kv_cache(stranger, text=text, key=KEY, candidates=CANDIDATES[:100], recompute=recompute)
        is None
    )
