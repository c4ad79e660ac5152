"""The embedded default data (tasks/data/): sizes, categories, split disjointness (within and across
roles), label semantics that make harm-conditioned refusal learnable, and a deterministic generator."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from bench.config import DataSection
from bench.data import ROLES, build_embedded, choose, dpo_pairs, load, load_role, prompt_key
from bench.data import borderline_text as B
from bench.data import embedded_text as T
from bench.data.trigger_split import mentions
from bench.data.embedded import DATA_DIR

SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def data():
    c = DataSection()
    return {(role, s): load_role(c, role, s) for role in ROLES for s in SPLITS}


def test_generator_is_deterministic_and_committed_files_match(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    build_embedded.write(a)
    build_embedded.write(b)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for n in names:
        assert (a / n).read_bytes() == (b / n).read_bytes(), n
        assert (a / n).read_bytes() == (DATA_DIR / n).read_bytes(), \
            f"tasks/data/{n} is out of date: run python -m bench.data.build_embedded"


def test_sizes_and_categories(data):
    pairs = sum(len(data[("preferences", s)]) for s in SPLITS)
    assert pairs >= 1200
    assert len(data[("preferences", "train")]) >= 850 and len(data[("preferences", "test")]) >= 150
    harm_cats = {r["category"] for s in SPLITS for r in data[("harmful", s)].rows}
    assert len(harm_cats) >= 8
    pair_harm_cats = {r["category"] for r in data[("preferences", "test")].rows} - {"benign", "borderline"}
    assert pair_harm_cats == harm_cats
    assert len(data[("harmful", "validation")]) >= 50
    # issue 21: test splits big enough for usable intervals
    assert len(data[("harmful", "test")]) >= 200 and len(data[("preferences", "test")]) >= 200
    assert len(data[("benign", "test")]) >= 150 and len(data[("helpfulness", "test")]) >= 150
    border_test = [r for r in data[("borderline", "test")].rows if r["label"] == "borderline"]
    assert len(border_test) >= 150
    by_type = Counter(r["category"] for r in border_test)  # every type well represented (issue 25)
    assert len(by_type) == 10 and min(by_type.values()) >= 12, by_type
    for s in ("train", "validation"):
        rows = Counter(r["category"] for r in data[("borderline", s)].rows if r["label"] == "borderline")
        assert len(rows) == 10 and min(rows.values()) >= (15 if s == "train" else 4), (s, rows)
    assert len(set(Counter(r["category"] for r in data[("harmful", "test")].rows).values())) == 1
    assert {r["label"] for r in data[("borderline", "test")].rows} == {"borderline", "unsafe-contrast"}
    assert all(r["reference"].strip() for r in data[("helpfulness", "test")].rows)
    assert sum(p.stat().st_size for p in DATA_DIR.iterdir()) < 3_000_000


def test_splits_disjoint_by_prompt_within_and_across_roles(data):
    keys = {k: {prompt_key(r) for r in ds.rows} for k, ds in data.items()}
    for (role, s), k in keys.items():
        if s == "train":
            continue
        for (role2, s2), k2 in keys.items():
            if s2 != s:
                assert not (k & k2), f"{role}/{s} shares prompts with {role2}/{s2}"


_STOP = frozenset({"a", "an", "the", "i", "my", "me", "to", "of", "in", "on", "for", "and", "or", "do", "does", "how",
                   "what", "why", "can", "could", "should", "is", "are", "be", "with", "from", "it", "its", "at",
                   "by", "this", "that", "your", "you", "best", "way"})


def _words(text: str) -> frozenset[str]:
    """Normalised content of a question: its lower-case words less a few function words, as a set,
    so 'How do I X?' and 'How can I X' are the same item."""
    return frozenset(re.sub(r"[^a-z0-9]+", " ", text.lower()).split()) - _STOP


def _underlying(role: str, row: dict) -> frozenset[str]:
    """The underlying request of a row: harmful -> the goal (the frame named in its id removed),
    benign -> the question (the wrapper named in its id removed), others -> the prompt/instruction."""
    if role == "harmful":
        fid = row["id"].rsplit("-", 1)[1]
        frames = T.HARMFUL_FRAMES if fid[0] == "f" else T.HARMFUL_FRAMES_TEST_ONLY
        head, tail = frames[int(fid[1:])].split("{goal}")
        assert row["prompt"].startswith(head) and row["prompt"].endswith(tail), row["id"]
        return _words(row["prompt"][len(head):len(row["prompt"]) - len(tail)])
    if role == "borderline" and "frame" in row:
        split, fi = row["frame"].split("-")
        head, tail = re.split(r"\{ql?\}", B.BORDERLINE_FRAMES[split][int(fi)])
        return _words(row["prompt"][len(head):len(row["prompt"]) - len(tail)])
    if role == "benign" and (m := re.fullmatch(r"benign-\d{3}-w(\d)", row["id"])):
        head, tail = T.BENIGN_WRAPPERS[int(m.group(1))].split("{q}")
        return _words(row["prompt"][len(head):len(row["prompt"]) - len(tail)])
    return _words(row.get("prompt") or row["instruction"])


def test_held_out_splits_disjoint_by_underlying_request(data):
    """No validation or test item asks, in other words, what a train item asks (or a test item what a
    validation item asks), within a role or across roles: harmful goals without their frames, benign
    questions without their wrappers, helpfulness instructions and borderline prompts, normalised."""
    roles = ("harmful", "benign", "borderline", "helpfulness")
    items = {(role, s): {_underlying(role, r): r["id"] for r in data[(role, s)].rows} for role in roles
             for s in SPLITS}
    for (role, s), got in items.items():
        for (role2, s2), other in items.items():
            if SPLITS.index(s2) < SPLITS.index(s):
                shared = sorted(got[k] for k in set(got) & set(other))
                assert not shared, f"{role}/{s} repeats {role2}/{s2}: {shared[:5]}"
    for role in roles:  # and no test item twice
        test = data[(role, "test")].rows
        assert len({r["id"] for r in test}) == len({prompt_key(r) for r in test}) == len(test), role
    goal_ids = {s: {r["id"].rsplit("-", 1)[0] for r in data[("harmful", s)].rows} for s in SPLITS}
    assert not goal_ids["test"] & (goal_ids["train"] | goal_ids["validation"])


def test_test_extras_only_append_to_the_test_files(monkeypatch):
    """Issue 21's test-only additions leave every train and validation file, the pairs and the
    original test rows (a prefix of each test file) exactly as the generator made them before."""
    full = build_embedded.build()
    monkeypatch.setattr(build_embedded, "add_test_extras", lambda *a: None)
    before = build_embedded.build()
    for name, text in before.items():
        if name.endswith("_test.jsonl"):
            assert full[name].startswith(text), name
        elif name != "MANIFEST.json":
            assert full[name] == text, name
    assert full["pairs_test.jsonl"] == before["pairs_test.jsonl"]


def test_harmful_test_goals_are_held_out(data):
    def goal(r):  # ids look like harm-<category>-g<goal>-<frame>
        return r["id"].rsplit("-", 1)[0]

    goals = {s: {goal(r) for r in data[("harmful", s)].rows} for s in SPLITS}
    assert not goals["train"] & goals["test"] and not goals["train"] & goals["validation"]
    test_only_frames = {r["id"].rsplit("-", 1)[1] for r in data[("harmful", "test")].rows} - \
        {r["id"].rsplit("-", 1)[1] for r in data[("harmful", "train")].rows}
    assert test_only_frames  # some test phrasings never occur in train


def test_borderline_held_out_splits_have_unseen_triggers_and_frames(data):
    """Issue 25: no validation or test borderline-safe prompt contains a trigger of another split (so the
    held-out over-refusal is measured on trigger words, terms and names never trained on), and each
    split's frames are its own."""
    rows = {s: [r for r in data[("borderline", s)].rows if r["label"] == "borderline"] for s in SPLITS}
    forms: dict[str, set[str]] = {}
    for items in B.BORDERLINE_ITEMS.values():
        for trigger, other, _, _ in items:
            forms.setdefault(trigger, {trigger}).update(other)
    triggers = {s: {r["trigger"] for r in rows[s]} for s in SPLITS}
    assert all(triggers.values()) and len(triggers["test"]) >= 100
    for s in SPLITS:
        for s2 in SPLITS:
            if s2 == s:
                continue
            assert not triggers[s] & triggers[s2], (s, s2)
            for r in rows[s]:
                leaked = [t for t in triggers[s2] if any(mentions(f, r["prompt"]) for f in forms[t])]
                assert not leaked, f"{r['id']} ({s}) mentions {s2} triggers {leaked}: {r['prompt']!r}"
    frames = {s: {r["frame"] for r in rows[s]} for s in SPLITS}
    assert all(f.startswith(s + "-") for s in SPLITS for f in frames[s])
    texts = {s: {B.BORDERLINE_FRAMES[s][int(f.split("-")[1])] for f in frames[s]} for s in SPLITS}
    assert not texts["test"] & (texts["train"] | texts["validation"] | set(T.BENIGN_WRAPPERS))
    assert not texts["validation"] & (texts["train"] | set(T.BENIGN_WRAPPERS))
    # every train/validation item teaches by one answer: its two pairs share the chosen response
    for s in ("train", "validation"):
        chosen: dict[str, set[str]] = {}
        for p in dpo_pairs(r for r in data[("preferences", s)].rows if r.get("prompt_label") == "borderline"):
            chosen.setdefault(p["prompt"], set()).add(p["chosen"])
        assert len(chosen) == len(rows[s]) and all(len(c) == 1 for c in chosen.values()), s


def test_labels_make_refusal_harm_conditioned(data):
    for s in SPLITS:
        for r in data[("preferences", s)].rows:
            chosen = choose(r, "safer_then_better")
            src = r[f"response_{chosen}_source"]
            if r["prompt_label"] in ("harmful", "unsafe-contrast"):
                assert src in ("embedded:refusal", "embedded:terse_refusal"), r["id"]
                assert r[f"is_response_{chosen}_safe"]
            else:
                assert src == "embedded:helpful", r["id"]
            for i in (0, 1):
                text = r[f"response_{i}"]
                assert len(text.split()) <= 80
                if r[f"response_{i}_source"] == "embedded:compliance":
                    assert not r[f"is_response_{i}_safe"] and "[" in text  # placeholder-level only
                    assert r[f"response_{i}_severity_level"] >= 1 and r[f"response_{i}_harm_category"]
                else:
                    assert r[f"is_response_{i}_safe"] and r[f"response_{i}_severity_level"] == 0
    train = data[("preferences", "train")].rows
    kinds = Counter(r["kind"] for r in train)
    assert set(kinds) == {"refusal_vs_compliance", "terse_refusal_vs_compliance", "refusal_vs_terse_refusal",
                          "helpful_vs_refusal", "helpful_vs_vague", "helpful_vs_off_topic", "helpful_vs_truncated"}
    refusals = {r[f"response_{i}"] for r in train for i in (0, 1) if r[f"response_{i}_source"] == "embedded:refusal"}
    assert len(refusals) >= 200  # varied wording, not one stock phrase
    # better != safer exists (helpfulness vs harmlessness tension, as in PKU), and positions are balanced
    assert 0.2 < sum(r["better_response_id"] != r["safer_response_id"] for r in train) / len(train) < 0.6
    assert 0.4 < sum(r["better_response_id"] for r in train) / len(train) < 0.6
    chosen = dpo_pairs(train, "safer_then_better")
    assert all(p["chosen_is_safe"] for p in chosen)


def test_embedded_loads_clean_and_capped(data):
    for ds in data.values():
        assert ds.identity["skipped"] == 0 and ds.identity["origin"] == "embedded"
        assert ds.identity["files"][0]["path"].startswith("tasks/data/")
    capped = load("embedded-pairs", "train", DataSection(max_train=32))
    assert len({r["category"] for r in capped.rows}) >= 4  # files are shuffled: a prefix is a mix
