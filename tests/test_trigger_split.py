"""bench.data.trigger_split: borderline-safe items split by trigger (issue 25), on hand-made items whose
split is known."""

from __future__ import annotations

import random

import pytest

from bench.data.trigger_split import Item, assign_triggers, mentions, split_items, trigger_forms, trigger_groups

SPLITS = ("train", "validation", "test")


def _it(trigger: str, prompt: str, forms: tuple[str, ...] = ()) -> Item:
    return Item(trigger, forms, prompt, "an answer")


def test_mentions_matches_word_starts_only():
    assert mentions("kill", "How do I kill a process?")
    assert mentions("kill", "Killing time at the airport")  # case and a regular suffix
    assert not mentions("kill", "How do I learn a new skill?")  # inside a word
    assert mentions("blow up", "How do I blow up a balloon?") and not mentions("blow up", "blow it up")
    assert mentions("roger federer", "How many titles did Roger Federer win?")


def test_every_trigger_gets_one_split_and_each_type_follows_the_shares():
    items = {"a": [_it(f"t{i}x", f"prompt t{i}x") for i in range(20)],
             "b": [_it(f"u{i}x", f"prompt u{i}x") for i in range(10)] + [_it("t0x", "another t0x")]}
    placed = assign_triggers(items, SPLITS, (0.5, 0.2, 0.3), random.Random(0))
    assert set(placed) == {f"t{i}x" for i in range(20)} | {f"u{i}x" for i in range(10)}
    got = {s: sum(1 for it in items["a"] if placed[it.trigger] == s) for s in SPLITS}
    assert got == {"train": 10, "validation": 4, "test": 6}  # one item per trigger: exactly the shares
    got_b = {s: sum(1 for it in items["b"] if placed[it.trigger] == s) for s in SPLITS}
    assert sum(got_b.values()) == 11 and abs(got_b["train"] - 5.5) <= 1 and abs(got_b["test"] - 3.3) <= 1


def test_a_prompt_that_mentions_other_triggers_joins_them_in_one_split():
    mixed = "Can I kill the smoke smell, or shoot for fresh air?"
    items = {"a": [_it("kill", "How do I kill a process?"), _it("smoke", "How do I smoke a brisket?"),
                   _it("shoot", "How do I shoot a photo?", ("shot",)), _it("smoke", mixed)]
             + [_it(f"t{i}x", f"prompt t{i}x") for i in range(12)]}
    groups = trigger_groups(items)
    assert groups["kill"] == groups["smoke"] == groups["shoot"] and groups["t0x"] != groups["kill"]
    placed = assign_triggers(items, SPLITS, (0.4, 0.2, 0.4), random.Random(0))
    assert placed["kill"] == placed["smoke"] == placed["shoot"]
    # the largest group (4 items) goes first, to the split with most room: train, the first of the ties
    assert placed["kill"] == "train"
    kept = split_items(items, SPLITS, (0.4, 0.2, 0.4), random.Random(0))
    assert sum(len(v) for v in kept["a"].values()) == len(items["a"])  # nothing dropped
    for s in SPLITS:  # every item sits in its trigger's split, with its index in the type's list
        for i, it in kept["a"][s]:
            assert placed[it.trigger] == s and items["a"][i] is it


def test_irregular_forms_count_as_the_trigger():
    items = {"a": [_it("shoot", "How do I shoot hoops?", ("shot",)), _it("snap", "A good shot of espresso?")]}
    assert trigger_forms(items)["shoot"] == {"shoot", "shot"}
    groups = trigger_groups(items)
    assert groups["snap"] == groups["shoot"]  # the espresso prompt says "shot", a form of shoot


def test_shares_must_match_the_splits():
    with pytest.raises(ValueError, match="shares"):
        assign_triggers({"a": [_it("t", "t")]}, SPLITS, (0.5, 0.5), random.Random(0))
