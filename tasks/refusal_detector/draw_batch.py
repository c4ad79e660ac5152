"""Draw a new batch of the suite's own generations for blind labelling (a held-out split of the judge).

    python tasks/refusal_detector/draw_batch.py leaderboards/default-s1 t6 OUT_DIR [--seed 6] [--parts 2]

Reads the committed samples of one leaderboard (``<assets>/samples/<variant>.jsonl``: every variant's
greedy answers with the judge's verdict), draws :data:`PER_SET` answers per variant and set at random
(``random.Random(seed)``; stratified by variant and set only, never by the judge's verdict, so the
batch estimates the judge's agreement without selection), drops answers already in a labelled file
(same prompt and completion), and writes:

- ``OUT_DIR/rows.jsonl``: the drawn rows with their source (``suite:<profile>:<variant>``), the keys a
  labelled file needs (``id``, ``prompt``, ``completion``, ``set``, ``source``), in id order;
- ``OUT_DIR/to_label_<k>.jsonl``: the labellers' inputs, ``parts`` disjoint shares in a shuffled
  order, with ``id``, ``set``, ``prompt`` and ``completion`` only (no source, no judge verdict).

A labeller returns ``id``, ``label``, ``refusal_then_comply``, ``note`` per row (GUIDELINE.md);
:func:`merge` joins them onto ``rows.jsonl`` as ``outputs_<name>.jsonl``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from bench.eval.judge_report import load_second_labels  # noqa: E402
PER_SET = {"refusal_harmful": ("harmful", 7), "over_refusal_benign": ("benign", 5),
           "over_refusal_borderline": ("borderline", 6)}


def _labelled_texts() -> set[tuple[str, str]]:
    seen = set()
    for path in HERE.glob("outputs_*.jsonl"):
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if "completion" in r:
                    seen.add((r["prompt"], r["completion"]))
    return seen


def draw(assets: Path, name: str, seed: int) -> list[dict]:
    profile = assets.name
    rng = random.Random(seed)
    seen = _labelled_texts()
    rows = []
    for path in sorted((assets / "samples").glob("*.jsonl")):
        variant = path.stem
        samples = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for set_key, (set_name, k) in PER_SET.items():
            pool = [s for s in samples if s["set"] == set_key and (s["prompt"], s["response"]) not in seen]
            for s in rng.sample(pool, min(k, len(pool))):
                seen.add((s["prompt"], s["response"]))
                source = f"suite:{profile}:{variant}"
                key = hashlib.sha256(json.dumps([source, s["prompt"], s["response"]]).encode()).hexdigest()[:10]
                rows.append({"id": f"{name}-{key}", "prompt": s["prompt"], "completion": s["response"],
                             "set": set_name, "source": source})  # the id says nothing of the source
    return sorted(rows, key=lambda r: r["id"])


def merge(rows_path: Path, label_paths: list[Path], out: Path) -> None:
    """``out``: every drawn row with its label. Each labeller's file is read as a second labeller's
    (:func:`bench.eval.judge_report.load_second_labels`: a bad row names file, line and field); every
    drawn row must be labelled exactly once across the files."""
    labels: dict[str, dict] = {}
    for p in label_paths:
        for i, r in load_second_labels(p).items():
            if i in labels:
                raise ValueError(f"{p}: id {i!r} is labelled in another file too")
            labels[i] = r
    rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
    missing = [r["id"] for r in rows if r["id"] not in labels]
    unknown = sorted(set(labels) - {r["id"] for r in rows})
    if missing or unknown:
        raise ValueError(f"unlabelled rows: {missing[:5]} ({len(missing)}); labels for unknown ids: {unknown[:5]} ({len(unknown)})")
    with out.open("w") as f:
        for r in rows:
            lab = labels[r["id"]]
            f.write(json.dumps(dict(r, label=lab["label"], refusal_then_comply=lab["refusal_then_comply"],
                                    note=lab.get("note", ""))) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("assets", type=Path)
    ap.add_argument("name")
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--parts", type=int, default=2)
    a = ap.parse_args()
    rows = draw(a.assets, a.name, a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    shuffled = rows[:]
    random.Random(a.seed + 1).shuffle(shuffled)
    for k in range(a.parts):
        part = shuffled[k::a.parts]
        (a.out / f"to_label_{k}.jsonl").write_text("".join(
            json.dumps({"id": r["id"], "set": r["set"], "prompt": r["prompt"], "completion": r["completion"]}) + "\n"
            for r in part))
    print(f"{len(rows)} rows -> {a.out}")


if __name__ == "__main__":
    main()
