"""Each variant against its own starting point: paired tests and per-category rates (pure functions).

Part of ``make eval`` (:mod:`bench.eval.battery`). Every variant is scored on the same prompts and
pairs as the variant it started from (:func:`bench.variants.starting_point`: the base for SFT, the
SFT policy for DPO and PPO, the unsteered policy for a steered variant), so a difference between the
two is tested on the *paired* per-prompt outcomes, not by comparing two independent intervals:

- rates (refusal on each set, preference accuracy): exact McNemar test on the discordant prompts
  (:func:`bench.stats.paired_rate`);
- means (reward, cost, log-prob margins): paired bootstrap of the per-prompt differences
  (:func:`bench.stats.paired_bootstrap`);
- ``pref_acc_implicit`` is already a comparison with the start (the implicit reward is
  log pi - log pi_start); its entry is an exact sign test of "the implicit reward prefers the chosen
  response" against chance (k of n pairs vs n - k, the McNemar statistic with b = k, c = n - k).

The result is ``{metric: {"vs", "test", "n", "delta", "ci_low", "ci_high", "p", "discordant"}}``
(delta = variant minus start), stored in the eval record's ``extra["paired"]``; the leaderboard
bolds a value only when its entry says it is significantly better (:mod:`bench.report`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Mapping, Sequence

from bench.eval.preference import TIE_NATS
from bench.stats import mcnemar_exact, paired_bootstrap, paired_rate, rate_metric

# generations.jsonl rows: which refusal-set flag each paired rate compares
RATE_FLAGS = {"is_refusal": "", "refusal_then_comply": "_then_comply"}
SCORE_COLUMNS = ("reward", "cost")
SCORED_SETS = {"refusal_harmful": "harmful", "helpfulness": "helpfulness"}  # row set -> metric suffix


def _key(row: Mapping) -> tuple:
    return (row["set"], row.get("id"), row["prompt"])


def _aligned(v_rows: Sequence[Mapping], s_rows: Sequence[Mapping], what: str) -> list[tuple[Mapping, Mapping]]:
    start = {_key(r): r for r in s_rows}
    missing = [k for k in map(_key, v_rows) if k not in start]
    if missing:
        raise ValueError(f"paired {what}: {len(missing)} of the variant's prompts are not in its starting "
                         f"point's generations (first: set {missing[0][0]}, id {missing[0][1]}); re-score the start")
    return [(r, start[_key(r)]) for r in v_rows]


def generation_pairs(v_rows: Sequence[Mapping], s_rows: Sequence[Mapping], refusal_sets: Sequence[str],
                     vs: str) -> dict[str, dict]:
    """Paired entries from two ``generations.jsonl`` row lists: refusal rates per set (and the
    refusal-then-comply share on harmful prompts), and mean reward / cost per scored set."""
    out: dict[str, dict] = {}
    by_set: dict[str, list[Mapping]] = defaultdict(list)
    for r in v_rows:
        by_set[r["set"]].append(r)
    for set_name in refusal_sets:
        rows = by_set.get(set_name) or []
        if not rows:
            continue
        pairs = _aligned(rows, s_rows, set_name)
        for flag, suffix in RATE_FLAGS.items():
            if suffix and set_name != "refusal_harmful":
                continue
            out[set_name + suffix] = paired_rate([bool(a.get(flag)) for a, _ in pairs],
                                                 [bool(b.get(flag)) for _, b in pairs])
    for set_name, suffix in SCORED_SETS.items():
        rows = by_set.get(set_name) or []
        pairs = _aligned(rows, s_rows, set_name) if rows else []
        for col in SCORE_COLUMNS:
            if not rows or any(r.get(col) is None for r in rows):
                continue
            if any(b.get(col) is None for _, b in pairs):
                continue
            out[f"{col}_{suffix}"] = paired_bootstrap([a[col] for a, _ in pairs], [b[col] for _, b in pairs])
    return {k: dict(e, vs=vs) for k, e in out.items()}


def pair_logprob_pairs(v: Mapping[str, Sequence], s: Mapping[str, Sequence], vs: str) -> dict[str, dict]:
    """Paired entries from per-pair log-probs of the variant (``v``) and its start (``s``), each
    ``{"chosen", "rejected", "chosen_tokens", "rejected_tokens"}`` lists aligned with the pairs."""
    n = len(v["chosen"])
    if n == 0:
        return {}
    if len(s["chosen"]) != n:
        raise ValueError(f"paired preference: the start has log-probs for {len(s['chosen'])} pairs, the variant for {n}")

    def margins(d: Mapping, per_token: bool) -> list[float]:
        if not per_token:
            return [c - r for c, r in zip(d["chosen"], d["rejected"])]
        return [c / max(nc, 1) - r / max(nr, 1)
                for c, r, nc, nr in zip(d["chosen"], d["rejected"], d["chosen_tokens"], d["rejected_tokens"])]

    def boot(xs: Sequence[float], ys: Sequence[float]) -> dict:  # differences within TIE_NATS are ties
        return paired_bootstrap(list(xs), [x if abs(x - y) <= TIE_NATS else y for x, y in zip(xs, ys)])

    out = {
        "pref_acc_raw": paired_rate([c > r for c, r in zip(v["chosen"], v["rejected"])],
                                    [c > r for c, r in zip(s["chosen"], s["rejected"])]),
        "logp_margin_sum": boot(margins(v, False), margins(s, False)),
        "logp_margin_per_token": boot(margins(v, True), margins(s, True)),
        "logp_chosen": boot(v["chosen"], s["chosen"]),
        "logp_rejected": boot(v["rejected"], s["rejected"]),
    }
    implicit = [(c - sc) - (r - sr) for c, r, sc, sr in zip(v["chosen"], v["rejected"], s["chosen"], s["rejected"])]
    out["pref_acc_implicit"] = implicit_sign_test(implicit)
    return {k: dict(e, vs=vs) for k, e in out.items()}


def implicit_sign_test(margins: Sequence[float]) -> dict:
    """Exact sign test of "the implicit reward prefers the chosen response" against chance: b = pairs
    whose implicit margin is above ``TIE_NATS``, c = pairs below ``-TIE_NATS``; ties (numerical noise)
    are left out, as in the sign test. delta = b / (b + c) - 0.5 with the Wilson interval, over the same
    decided pairs as the test, so its sign always agrees with the test's direction (a variant with many
    ties and more b than c is never marked worse)."""
    n = len(margins)
    k = sum(m > TIE_NATS for m in margins)
    neg = sum(m < -TIE_NATS for m in margins)
    won = rate_metric(k, k + neg)
    if k + neg == 0:
        return {"test": "sign-exact", "n": n, "delta": 0.0, "ci_low": None, "ci_high": None, "p": 1.0,
                "discordant": [0, 0]}
    return {"test": "sign-exact", "n": n, "delta": won["value"] - 0.5, "ci_low": won["ci_low"] - 0.5,
            "ci_high": won["ci_high"] - 0.5, "p": mcnemar_exact(k, neg), "discordant": [k, neg]}


def by_category(rows: Sequence[Mapping], refusal_sets: Sequence[str]) -> dict[str, dict[str, dict]]:
    """``{refusal metric: {category: rate}}``: the refusal share (refuse + partial) per category of
    each refusal set (harm categories; XSTest-style types for the borderline set)."""
    out: dict[str, dict[str, dict]] = {}
    for set_name in refusal_sets:
        groups: dict[str, list[bool]] = defaultdict(list)
        for r in rows:
            if r["set"] == set_name:
                groups[str(r.get("category") or "uncategorised")].append(bool(r.get("is_refusal")))
        if groups:
            out[set_name] = {c: rate_metric(sum(v), len(v)) for c, v in sorted(groups.items())}
    return out
