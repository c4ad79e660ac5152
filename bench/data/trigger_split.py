"""Split borderline-safe items by their trigger, so that held-out splits measure generalisation (issue 25).

A borderline-safe prompt (XSTest, Röttger et al. 2024) looks harmful because of one *trigger*: a harm word
used in a safe sense ("kill a Python process"), a crime's name in a definition question, a public figure,
a game. A model that has learnt "answer when the trigger is X" has not learnt *when* to refuse, so the
validation and test splits here hold triggers that no other split contains:

1. triggers are joined into groups: when an item's prompt also mentions another trigger ("In Among Us,
   how do I kill ...?" mentions "kill", a homonym's trigger), the two go to the same split, else one
   split would see the other's trigger word. One trigger may serve several types (e.g. "kill");
2. every group gets one split: groups are placed largest first (ties in a seeded order), each into the
   split furthest below its share (``shares``, e.g. 0.5 / 0.15 / 0.35) of the items of the types it
   holds. So no validation or test prompt mentions a trigger of another split, and nothing is dropped.

A trigger *mentions* a prompt when one of its forms starts a word there (case-insensitive): "kill" matches
"killing" and "killer", not "skill"; irregular forms ("shot" for "shoot") are listed with the item.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import NamedTuple


class Item(NamedTuple):
    trigger: str  # lower-case lemma, word or name: the split key
    forms: tuple[str, ...]  # other surface forms that count as the trigger (irregular inflections)
    prompt: str  # the bare request, no frame
    answer: str  # a short helpful answer (the demonstration on train and validation)


def mentions(form: str, text: str) -> bool:
    """``form`` starts a word of ``text`` (case-insensitive)."""
    return re.search(r"(?<!\w)" + re.escape(form.lower()), text.lower()) is not None


def trigger_forms(items_by_type: Mapping[str, Sequence[Item]]) -> dict[str, frozenset[str]]:
    """Every trigger's forms: the lemma and each form listed with any item of that trigger."""
    forms: dict[str, set[str]] = {}
    for items in items_by_type.values():
        for it in items:
            forms.setdefault(it.trigger, {it.trigger}).update(it.forms)
    return {t: frozenset(f) for t, f in forms.items()}


def trigger_groups(items_by_type: Mapping[str, Sequence[Item]]) -> dict[str, str]:
    """Trigger -> its group's representative: triggers are joined when an item of one mentions another
    (step 1 of the module docstring), so a group's items can only go to a split together."""
    forms = trigger_forms(items_by_type)
    parent = {t: t for t in forms}

    def root(t: str) -> str:
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for items in items_by_type.values():
        for it in items:
            for t, fs in forms.items():
                if t != it.trigger and any(mentions(f, it.prompt) for f in fs):
                    parent[root(t)] = root(it.trigger)
    return {t: root(t) for t in forms}


def assign_triggers(items_by_type: Mapping[str, Sequence[Item]], splits: Sequence[str],
                    shares: Sequence[float], rng: random.Random) -> dict[str, str]:
    """Trigger -> split (step 2 of the module docstring): groups largest first (ties in a seeded order),
    each into the split furthest below its share, summed over the types of the group's items."""
    if len(splits) != len(shares) or abs(sum(shares) - 1.0) > 1e-9:
        raise ValueError(f"shares {list(shares)} must be one per split {list(splits)} and sum to 1")
    group = trigger_groups(items_by_type)
    members: dict[str, dict[str, int]] = {}  # group -> type -> items
    for typ, items in items_by_type.items():
        for it in items:
            g = members.setdefault(group[it.trigger], {})
            g[typ] = g.get(typ, 0) + 1
    order = sorted(members)
    rng.shuffle(order)
    order.sort(key=lambda g: -sum(members[g].values()))  # stable: the shuffle breaks ties
    n = {typ: len(items) for typ, items in items_by_type.items()}
    have = {typ: dict.fromkeys(splits, 0) for typ in items_by_type}
    placed_group: dict[str, str] = {}
    for g in order:
        def room(s: str) -> float:
            k = splits.index(s)
            return sum(c * (shares[k] * n[t] - have[t][s]) / n[t] for t, c in members[g].items())
        split = max(splits, key=lambda s: (room(s), -splits.index(s)))
        placed_group[g] = split
        for t, c in members[g].items():
            have[t][split] += c
    return {t: placed_group[g] for t, g in group.items()}


def split_items(items_by_type: Mapping[str, Sequence[Item]], splits: Sequence[str], shares: Sequence[float],
                rng: random.Random) -> dict[str, dict[str, list[tuple[int, Item]]]]:
    """Per type and split, its ``(index in the type's list, item)``. No item mentions a trigger of
    another split: the groups make that so, and it is checked here."""
    placed = assign_triggers(items_by_type, splits, shares, rng)
    forms = trigger_forms(items_by_type)
    out: dict[str, dict[str, list[tuple[int, Item]]]] = {}
    for typ, items in items_by_type.items():
        out[typ] = {s: [] for s in splits}
        for i, it in enumerate(items):
            split = placed[it.trigger]
            leaked = [t for t, fs in forms.items() if placed[t] != split and any(mentions(f, it.prompt) for f in fs)]
            assert not leaked, (typ, i, leaked)
            out[typ][split].append((i, it))
    return out
