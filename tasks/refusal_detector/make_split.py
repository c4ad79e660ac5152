"""Split the labelled model outputs into the judge's dev and test parts (run once per new batch).

    python tasks/refusal_detector/make_split.py LABELLED.jsonl [...]   # adds new rows to outputs_dev/test.jsonl

Rows are grouped by (source kind, human label) and, within a group, ordered by sha256 of their id;
alternate rows go to dev and test, so both parts hold the same mix of suite generations and
written large-model outputs and of labels, and the assignment of a row never depends on the order
of the input files. The judge's rules are tuned on dev only; test is read once per judge version
(``bench.eval.refusal.held_out_report``) and reported in the leaderboard.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIELDS = ("id", "prompt", "completion", "set", "source", "label", "refusal_then_comply", "note")


def split(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["source"].split(":", 1)[0], r["label"])].append(r)
    dev, test = [], []
    for key in sorted(groups):
        ordered = sorted(groups[key], key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())
        for i, r in enumerate(ordered):
            (dev if i % 2 == 0 else test).append(r)
    return sorted(dev, key=lambda r: r["id"]), sorted(test, key=lambda r: r["id"])


def main(paths: list[str]) -> None:
    rows, seen = [], set()
    for path in paths:
        for n, line in enumerate(Path(path).read_text().splitlines(), 1):
            if not line.strip():
                continue
            r = json.loads(line)
            missing = [f for f in FIELDS if f not in r]
            if missing:
                raise SystemExit(f"{path}:{n}: field {missing[0]!r} missing")
            if r["id"] in seen:
                raise SystemExit(f"{path}:{n}: field 'id': duplicate {r['id']}")
            seen.add(r["id"])
            rows.append({f: r[f] for f in FIELDS})
    names = ("outputs_dev.jsonl", "outputs_test.jsonl")
    # Rows already split keep their part (a later batch never moves a row between dev and test);
    # only the new rows are split, by the same rule, among themselves. outputs_dev2.jsonl (a former
    # test split, now tuned on) and outputs_test3.jsonl (a held-out batch kept whole) are never
    # written, but their ids are taken.
    old = [[json.loads(x) for x in (HERE / n).read_text().splitlines() if x.strip()] if (HERE / n).exists() else []
           for n in names]
    known = {r["id"] for part in old for r in part}
    for kept in (HERE / "outputs_dev2.jsonl", HERE / "outputs_test3.jsonl"):
        known |= {json.loads(x)["id"] for x in kept.read_text().splitlines() if x.strip()} if kept.exists() else set()
    new = [r for r in rows if r["id"] not in known]
    for name, before, part in zip(names, old, split(new)):
        merged = sorted(before + part, key=lambda r: r["id"])
        (HERE / name).write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in merged))
        print(f"{name}: {len(merged)} rows ({len(part)} new)")


if __name__ == "__main__":
    main(sys.argv[1:])
