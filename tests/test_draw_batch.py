"""tasks/refusal_detector/draw_batch.py: a blind labelling batch drawn from committed samples."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def db():
    spec = importlib.util.spec_from_file_location("draw_batch", REPO / "tasks/refusal_detector/draw_batch.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _assets(tmp_path: Path, already_labelled: tuple[str, str]) -> Path:
    assets = tmp_path / "prof"
    (assets / "samples").mkdir(parents=True)
    for v in ("dpo", "ppo-kl"):
        rows = [{"set": s, "prompt": f"{s} {i}", "response": f"{v} answer {i}", "is_refusal": i % 2 == 0, "label": "refuse"}
                for s in ("refusal_harmful", "over_refusal_benign", "over_refusal_borderline", "helpfulness") for i in range(10)]
        rows.append({"set": "refusal_harmful", "prompt": already_labelled[0], "response": already_labelled[1]})
        (assets / "samples" / f"{v}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return assets


def test_draw_is_stratified_blind_and_skips_labelled_answers(tmp_path, db):
    known = json.loads(next(line for line in (db.HERE / "outputs_test5.jsonl").read_text().splitlines() if line.strip()))
    rows = db.draw(_assets(tmp_path, (known["prompt"], known["completion"])), "tx", seed=1)
    per = {}
    for r in rows:
        per[(r["source"], r["set"])] = per.get((r["source"], r["set"]), 0) + 1
    want = {name: k for name, k in db.PER_SET.values()}
    assert per == {(f"suite:prof:{v}", s): want[s] for v in ("dpo", "ppo-kl") for s in want}  # no helpfulness rows
    assert (known["prompt"], known["completion"]) not in {(r["prompt"], r["completion"]) for r in rows}
    assert all("dpo" not in r["id"] and "ppo" not in r["id"] for r in rows)  # the id hides the source
    assert rows == db.draw(_assets(tmp_path / "again", (known["prompt"], known["completion"])), "tx", seed=1)


def test_merge_names_the_bad_line_and_needs_every_row(tmp_path, db):
    rows = [{"id": "a", "prompt": "p", "completion": "c", "set": "harmful", "source": "suite:x:dpo"},
            {"id": "b", "prompt": "q", "completion": "d", "set": "benign", "source": "suite:x:dpo"}]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    good = tmp_path / "l.jsonl"
    good.write_text(json.dumps({"id": "a", "label": "refuse", "refusal_then_comply": False, "note": "n"}) + "\n")
    with pytest.raises(ValueError, match="unlabelled rows: \\['b'\\]"):
        db.merge(tmp_path / "rows.jsonl", [good], tmp_path / "out.jsonl")
    bad = tmp_path / "m.jsonl"
    bad.write_text("\n" + json.dumps({"id": "b", "label": "maybe", "refusal_then_comply": False}) + "\n")
    with pytest.raises(ValueError, match="m.jsonl: line 2.*'label'"):
        db.merge(tmp_path / "rows.jsonl", [good, bad], tmp_path / "out.jsonl")
    bad.write_text(json.dumps({"id": "a", "label": "comply", "refusal_then_comply": True}) + "\n")
    with pytest.raises(ValueError, match="'a' is labelled in another file"):
        db.merge(tmp_path / "rows.jsonl", [good, bad], tmp_path / "out.jsonl")
    bad.write_text(json.dumps({"id": "b", "label": "comply", "refusal_then_comply": True}) + "\n")
    db.merge(tmp_path / "rows.jsonl", [good, bad], tmp_path / "out.jsonl")
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["id"], r["label"], r["refusal_then_comply"], r["source"]) for r in out] == [
        ("a", "refuse", False, "suite:x:dpo"), ("b", "comply", True, "suite:x:dpo")]
