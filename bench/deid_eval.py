"""Precision and recall of the de-identification scanner on a labelled set.

    python bench/deid_eval.py [--data bench/data/deid_labelled.jsonl] [--min-score 0.5] [--errors]

Matching rule (span level): a predicted finding and a labelled span match when they have the same
type and their character ranges overlap; each labelled span matches at most one finding and vice versa
(largest overlap first). Precision for a type = matched findings of that type / findings of that type;
recall = matched labelled spans of that type / labelled spans of that type; "overall" is the micro
average over all types. Findings are those `scan` returns at `--min-score` (the publish gate's default
threshold), so the figures describe what a publisher would actually be shown. Names and places
(PERSON, LOCATION) come from the configured NER (`MEMHUB_DEID_NER`; outside Django the default,
`governance.deid.ner:default_ner`); `--no-ner` scores the rule-based recognizers alone. `load` gives
the seconds the first scan took (Presidio, spaCy and the NER model loading) and the scan rate after it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from governance.deid import DEFAULT_MIN_SCORE, configure_ner, ner_setting, registered_ner, scan

DATA = Path(__file__).with_name("data") / "deid_labelled.jsonl"


def match(gold: list[dict], pred: list[dict]) -> tuple[list[tuple[int, int]], set[int], set[int]]:
    pairs = []
    for gi, g in enumerate(gold):
        for pi, p in enumerate(pred):
            overlap = min(g["end"], p["end"]) - max(g["start"], p["start"])
            if g["type"] == p["type"] and overlap > 0:
                pairs.append((overlap, gi, pi))
    used_g: set[int] = set()
    used_p: set[int] = set()
    matched = []
    for _overlap, gi, pi in sorted(pairs, reverse=True):
        if gi not in used_g and pi not in used_p:
            used_g.add(gi)
            used_p.add(pi)
            matched.append((gi, pi))
    return matched, set(range(len(gold))) - used_g, set(range(len(pred))) - used_p


def evaluate(rows: list[dict], min_score: float, show_errors: bool) -> dict:
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    lookalike_texts: Counter[str] = Counter()
    lookalike_flagged: Counter[str] = Counter()
    errors: list[dict] = []
    for row in rows:
        text = row["text"]
        pred = [{"start": f.start, "end": f.end, "type": f.type, "score": f.score, "recognizer": f.recognizer}
                for f in scan(text, min_score=min_score)]  # fmt: skip
        matched, missed, spurious = match(row["spans"], pred)
        for gi, _pi in matched:
            tp[row["spans"][gi]["type"]] += 1
        for gi in missed:
            fn[row["spans"][gi]["type"]] += 1
        for pi in spurious:
            fp[pred[pi]["type"]] += 1
        if row.get("kind") == "lookalike":
            lookalike_texts[row["category"]] += 1
            lookalike_flagged[row["category"]] += bool(pred)
        if show_errors and (missed or spurious):
            gold = row["spans"]
            errors.append(
                {
                    "text": text[:200],
                    "missed": [
                        dict(gold[i], value=text[gold[i]["start"] : gold[i]["end"]][:60]) for i in missed
                    ],
                    "spurious": [
                        dict(pred[i], value=text[pred[i]["start"] : pred[i]["end"]][:60]) for i in spurious
                    ],
                }
            )

    def pr(t: int, f_p: int, f_n: int) -> dict:
        return {
            "precision": round(t / (t + f_p), 4) if t + f_p else 1.0,
            "recall": round(t / (t + f_n), 4) if t + f_n else 1.0,
            "tp": t,
            "fp": f_p,
            "fn": f_n,
        }

    types = sorted(set(tp) | set(fp) | set(fn))
    result: dict = {
        "overall": pr(sum(tp.values()), sum(fp.values()), sum(fn.values())),
        "per_type": {t: pr(tp[t], fp[t], fn[t]) for t in types},
        "lookalikes": {
            "texts": sum(lookalike_texts.values()),
            "flagged": sum(lookalike_flagged.values()),
            "per_category": {c: f"{lookalike_flagged[c]}/{n}" for c, n in sorted(lookalike_texts.items())},
        },
        "texts": len(rows),
        "labelled_spans": sum(len(r["spans"]) for r in rows),
        "min_score": min_score,
        "matching": "same type and overlapping character range, one-to-one, largest overlap first",
    }
    if show_errors:
        result["errors"] = errors
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description="Score the PII/secret scanner on a labelled JSONL set.")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--min-score", type=float, default=DEFAULT_MIN_SCORE)
    parser.add_argument("--errors", action="store_true", help="list missed and spurious spans")
    parser.add_argument("--no-ner", action="store_true", help="score without the NER plug-in")
    args = parser.parse_args()
    if args.no_ner:
        configure_ner(None)
    rows = [json.loads(line) for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    t0 = time.perf_counter()
    scan("Warm-up: Ada Lovelace wrote to ada@analytical-engines.co.uk from London.")
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    result = evaluate(rows, args.min_score, args.errors)
    elapsed = time.perf_counter() - t1
    result["ner"] = {"setting": "" if args.no_ner else ner_setting(), "plugins": list(registered_ner())}
    result["load"] = {
        "first_scan_s": round(first, 2),
        "scan_s": round(elapsed, 2),
        "texts_per_s": round(len(rows) / elapsed, 1) if elapsed else None,
        "chars_per_s": round(sum(len(r["text"]) for r in rows) / elapsed) if elapsed else None,
    }
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
