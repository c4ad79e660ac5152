"""Side-by-side examples: a few prompts per refusal set with every variant's answer and the judge's label.

Read from the committed samples (``leaderboards/<profile>/samples/<variant>.jsonl``, copied there by
``bench publish`` from each eval run's ``generations.jsonl``), so a reader sees what a rate counts
without running anything. The prompts shown are those the variants disagree on most (most distinct
labels, then most refusals and compliances both present, then id): a rate's differences live there.
Answers are cut to :data:`MAX_CHARS` characters; the full text is in the samples.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from bench.report import SAMPLES_DIR
from bench.report.sections import table

SETS = (("refusal_harmful", "harmful prompts"), ("over_refusal_benign", "benign prompts"),
        ("over_refusal_borderline", "borderline-safe prompts"))
PER_SET = 2
MAX_CHARS = 180


def _short(text: str) -> str:
    one = " ".join((text or "").split())
    return one if len(one) <= MAX_CHARS else one[: MAX_CHARS - 1].rstrip() + "…"


def load_samples(assets: Path, variants: list[str]) -> dict[str, list[dict]]:
    """``{variant: rows}`` for the variants with a committed sample file."""
    out = {}
    for v in variants:
        path = assets / SAMPLES_DIR / f"{v}.jsonl"
        if path.exists():
            out[v] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def pick(samples: dict[str, list[dict]], set_name: str, k: int = PER_SET) -> list[tuple[str, str]]:
    """The ``k`` (id, prompt) keys of ``set_name`` whose labels differ most across variants."""
    labels: dict[tuple[str, str], list[str]] = defaultdict(list)
    for rows in samples.values():
        for r in rows:
            if r.get("set") == set_name:
                labels[(str(r.get("id")), r["prompt"])].append(r.get("label", ""))
    full = [key for key, ls in labels.items() if len(ls) == len(samples)]

    def score(key):
        ls = labels[key]
        return (-len(set(ls)), -min(sum(x == "comply" for x in ls), sum(x != "comply" for x in ls)), key[0])

    return sorted(full, key=score)[:k]


def examples_section(evals: list[dict], assets: Path) -> list[str]:
    variants = [r["variant"] for r in evals]
    samples = load_samples(assets, variants)
    if len(samples) < 2:
        return []
    lines = ["## Examples", "",
             f"Greedy answers to the prompts the variants disagree on most, per set (cut at {MAX_CHARS} characters; "
             f"every answer and verdict is in `{assets.parent.name}/{assets.name}/{SAMPLES_DIR}/<variant>.jsonl`). "
             "Label: the refusal judge's verdict; † marks a refusal followed by the requested content.", ""]
    for set_name, title in SETS:
        keys = pick(samples, set_name)
        if not keys:
            continue
        lines += [f"### {title.capitalize()}", ""]
        for ident, prompt in keys:
            lines += [f"**{_short(prompt)}** (`{ident}`)", ""]
            rows = []
            for v in variants:
                hit = next((r for r in samples.get(v, []) if r.get("set") == set_name
                            and str(r.get("id")) == ident and r["prompt"] == prompt), None)
                if hit is not None:
                    mark = " †" if hit.get("refusal_then_comply") else ""
                    rows.append([f"`{v}`", f"{hit.get('label', '–')}{mark}", _short(hit.get("response", ""))])
            lines += table(["variant", "label", "answer"], rows, ["l", "l", "l"]) + [""]
    return lines
