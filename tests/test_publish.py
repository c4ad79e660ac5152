"""`bench publish`: the generations behind every rate are committed under samples/ and named by a
repo-relative path, published records carry no machine paths, the judge's held-out agreement is
written beside them, and a missing generations file stops the publish before anything changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import published
from bench.records import RecordError


def _record(variant: str, stage: str, artifacts: dict) -> dict:
    return {"schema_version": 1, "variant": variant, "stage": stage, "profile": "p", "config_hash": "h",
            "metrics": {}, "artifacts": artifacts, "extra": {}}


def _runs(tmp_path: Path, with_generations: bool = True) -> Path:
    runs = tmp_path / "runs" / "p"
    (runs / "sft").mkdir(parents=True)
    (runs / "sft" / "record.json").write_text(json.dumps(_record("sft", "sft", {"model_dir": str(runs / "sft" / "model")})))
    ev = runs / "eval" / "sft"
    ev.mkdir(parents=True)
    (ev / "record.json").write_text(json.dumps(_record("sft", "eval", {"generations": "generations.jsonl"})))
    if with_generations:
        (ev / "generations.jsonl").write_text('{"set": "refusal_harmful", "response": "No."}\n')
    return runs


@pytest.fixture(autouse=True)
def fixed_judge(monkeypatch):
    from bench.eval import judge_report

    monkeypatch.setattr(judge_report, "held_out_report", lambda: {"judge": {"name": "j", "version": "9"}, "n": 3})


def test_publish_commits_samples_with_repo_relative_paths(tmp_path):
    runs = _runs(tmp_path)
    out = tmp_path / "leaderboards"
    published.publish_records("p", runs=runs, out_root=out)
    sample = out / "p" / "samples" / "sft.jsonl"
    assert sample.read_text() == (runs / "eval" / "sft" / "generations.jsonl").read_text()
    ev = json.loads((out / "p" / "records" / "eval" / "sft.json").read_text())
    assert ev["artifacts"]["generations"] == "leaderboards/p/samples/sft.jsonl"
    st = json.loads((out / "p" / "records" / "sft.json").read_text())
    assert st["artifacts"]["model_dir"] == "runs/p/sft/model"  # no absolute path of this machine
    assert json.loads((out / "p" / "judge.json").read_text())["judge"]["version"] == "9"
    # a variant no longer reported loses its sample on the next publish
    (out / "p" / "samples" / "gone.jsonl").write_text("{}\n")
    published.publish_records("p", runs=runs, out_root=out)
    assert not (out / "p" / "samples" / "gone.jsonl").exists()


def test_missing_generations_stop_publish_before_records_change(tmp_path):
    runs = _runs(tmp_path, with_generations=False)
    out = tmp_path / "leaderboards"
    (out / "p" / "records").mkdir(parents=True)
    (out / "p" / "records" / "old.json").write_text("{}")
    with pytest.raises(RecordError, match=r"generations\.jsonl.*'sft'.*--variant sft --force"):
        published.publish_records("p", runs=runs, out_root=out)
    assert (out / "p" / "records" / "old.json").exists()  # nothing already written is lost


@pytest.mark.parametrize(("path", "want"), [
    ("{runs}/sft/model", "runs/p/sft/model"),
    ("{repo}/configs/x.json", "configs/x.json"),
    ("{home}/.cache/m", "~/.cache/m"),
    ("/opt/elsewhere/m", "/opt/elsewhere/m"),
    ("relative/x", "relative/x"),
])
def test_portable_paths(tmp_path, path, want):
    from bench.config import REPO_ROOT

    runs = tmp_path / "runs" / "p"
    value = path.format(runs=runs, repo=REPO_ROOT, home=Path.home())
    assert published.portable_paths({"a": [value]}, profile_root=runs, profile="p") == {"a": [want]}


def test_examples_show_the_prompts_variants_disagree_on(tmp_path):
    from bench.report.examples import examples_section, pick

    samples = tmp_path / "p" / "samples"
    samples.mkdir(parents=True)
    rows = {  # prompt h1: all comply; h2: sft refuses, dpo complies after a refusal
        "sft": [{"set": "refusal_harmful", "id": "h1", "prompt": "P1", "label": "comply", "response": "Sure."},
                {"set": "refusal_harmful", "id": "h2", "prompt": "P2", "label": "refuse", "response": "No | never."}],
        "dpo": [{"set": "refusal_harmful", "id": "h1", "prompt": "P1", "label": "comply", "response": "Sure."},
                {"set": "refusal_harmful", "id": "h2", "prompt": "P2", "label": "comply", "response": "x " * 200,
                 "refusal_then_comply": True}],
    }
    for v, rs in rows.items():
        (samples / f"{v}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    from bench.report.examples import load_samples

    assert pick(load_samples(tmp_path / "p", ["sft", "dpo"]), "refusal_harmful", k=1) == [("h2", "P2")]
    text = "\n".join(examples_section([{"variant": "sft"}, {"variant": "dpo"}], tmp_path / "p"))
    assert "**P2** (`h2`)" in text and "| `dpo` | comply † |" in text
    assert "No \\| never." in text and "…" in text  # cells escaped, long answers cut
    assert examples_section([{"variant": "sft"}], tmp_path / "p") == []  # one variant: nothing to compare
