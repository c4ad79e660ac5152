"""The leaderboard's "One-factor contrasts": pairs of rows that differ in one setting, tested against each other.

    bench leaderboard --profile default    # bench.leaderboard calls contrasts_section on the records

The main tables test every row against its own starting point; a reader comparing two rows (ppo-kl
against ppo-nokl: does the KL term matter? dpo against dpo-lora: does LoRA match?) needs the two rows
tested against each other, on the same prompts. A pair is shown when both are trained variants of the
same stage and their settings differ in exactly one factor (:data:`FACTORS`): the loss, beta, the
rejected responses, the regulariser, the Lagrangian, ..., or the tuning (full / LoRA / top blocks with its
learning rate, from ``extra.tuning``). Settings come from each training record's ``extra.variant`` and
``extra.tuning``; the verdicts from the committed samples (``leaderboards/<profile>/samples/<variant>.jsonl``,
the judge's ``is_refusal`` per prompt). Each rate gets the difference with Newcombe's paired interval and
the exact McNemar p (:func:`bench.stats.paired_rate`); "not distinguishable" where p >= 0.05. p is per
comparison, uncorrected for the number of pairs shown. Tested in ``tests/test_contrasts.py``.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

from bench import metrics
from bench.records import is_eval_key
from bench.report.examples import SETS as EXAMPLE_SETS
from bench.report.examples import load_samples
from bench.report.sections import table, variant_key
from bench.report.training import tuning_text
from bench.stats import ALPHA, paired_rate

SETS = tuple(name for name, _ in EXAMPLE_SETS)  # the refusal sets, as the examples section shows them
# Setting keys that change together by construction make one factor (a loss and its weights; a regulariser
# and the coefficient it takes); any other key of extra.variant is a factor of its own.
FACTORS = {"loss_type": "loss", "loss_weights": "loss", "regulariser": "regulariser", "coef": "regulariser"}
TUNING_KEYS = ("trainable", "learning_rate", "top_layers", "lora")
IGNORED = ("trainable", "learning_rate")  # a variant's own override: its effect is in extra.tuning


def settings(rec: dict) -> dict[str, tuple] | None:
    """``{factor: value}`` of a training record, or None when it carries no settings."""
    extra = rec.get("extra") or {}
    variant, tuning = extra.get("variant"), extra.get("tuning")
    if not isinstance(variant, dict) or not isinstance(tuning, dict):
        return None
    out: dict[str, list] = {}
    for key in sorted(variant):
        if key not in IGNORED:
            out.setdefault(FACTORS.get(key, key.replace("_", " ")), []).append((key, variant[key]))
    out["tuning"] = [(k, tuning.get(k)) for k in TUNING_KEYS]
    return {f: tuple(v) for f, v in out.items()}


def _show(factor: str, value: tuple) -> str:
    """A factor's value in a few words: ``top 6 blocks, lr 5e-05``, ``js (coef 0.05)``, ``reverse_kl``."""
    d = dict(value)
    if factor == "tuning":
        return tuning_text(d, short=True)

    def text(v) -> str:
        return "+".join(map(str, v)) if isinstance(v, list) else str(v)

    if len(d) == 1:
        return text(next(iter(d.values())))
    main = {"loss": "loss_type"}.get(factor, factor.replace(" ", "_"))
    head = text(d[main]) if main in d else ""
    rest = ", ".join(f"{k} {text(v)}" for k, v in d.items() if k != main and v is not None)
    return f"{head} ({rest})" if head and rest else head or rest


def pairs(records: dict[str, dict]) -> list[tuple[str, str, str, str, str]]:
    """``(a, b, factor, a's value, b's value)`` for same-stage trained variants differing in one factor."""
    recs = sorted(((r["variant"], r) for k, r in records.items() if not is_eval_key(k)),
                  key=lambda vr: variant_key(vr[0], vr[1]["stage"]))
    found = [(v, r["stage"], settings(r)) for v, r in recs]
    out = []
    for (a, sa, fa), (b, sb, fb) in combinations([x for x in found if x[2] is not None], 2):
        if sa != sb or set(fa) != set(fb):
            continue
        differ = [f for f in fa if fa[f] != fb[f]]
        if len(differ) == 1:
            f = differ[0]
            out.append((a, b, f, _show(f, fa[f]), _show(f, fb[f])))
    return out


def _verdicts(rows: list[dict]) -> dict[tuple, bool]:
    """``{(set, id, prompt): refused}`` of a variant's committed samples (rows without a verdict left out)."""
    return {(r["set"], r.get("id"), r["prompt"]): bool(r["is_refusal"]) for r in rows if "is_refusal" in r}


def contrast(a: dict, b: dict, set_name: str) -> dict | None:
    """The paired test of two variants' refusal rates on the prompts of ``set_name`` both answered
    (``a``, ``b``: :func:`_verdicts`): :func:`bench.stats.paired_rate`'s entry plus both rates (``rate_a``,
    ``rate_b``) and ``verdict`` ("higher" / "lower": the first vs the second, or "not distinguishable");
    None when they share no prompt of the set."""
    keys = sorted(k for k in a if k[0] == set_name and k in b)
    if not keys:
        return None
    e = paired_rate([a[k] for k in keys], [b[k] for k in keys])
    verdict = "not distinguishable" if e["p"] >= ALPHA else ("higher" if e["delta"] > 0 else "lower")
    return dict(e, rate_a=sum(a[k] for k in keys) / len(keys), rate_b=sum(b[k] for k in keys) / len(keys), verdict=verdict)


def _cell(a: dict, b: dict, set_name: str) -> str:
    e = contrast(a, b, set_name)
    if e is None:
        return "–"
    p = "p < 0.001" if e["p"] < 0.001 else f"p {e['p']:.3f}"
    return (f"{e['rate_a']:.3f} vs {e['rate_b']:.3f}: {e['delta']:+.3f} [{e['ci_low']:+.3f}, {e['ci_high']:+.3f}], {p}, "
            f"b/c {e['discordant'][0]}/{e['discordant'][1]}, **{e['verdict']}**")


def contrast_verdicts(records: dict[str, dict], assets: Path) -> tuple[list[tuple[str, str, str, str, str]], dict[str, dict]]:
    """``(pairs whose two variants both have committed samples, {variant: verdicts})``."""
    found = pairs(records)
    verdicts = {v: _verdicts(rows) for v, rows in load_samples(assets, sorted({x for p in found for x in p[:2]})).items()}
    return [p for p in found if p[0] in verdicts and p[1] in verdicts], verdicts


def contrasts_section(records: dict[str, dict], assets: Path) -> list[str]:
    found, verdicts = contrast_verdicts(records, assets)  # a variant without committed samples has nothing to test
    rows = [[f"`{a}` vs `{b}`", f"{factor}: {va} / {vb}"] + [_cell(verdicts[a], verdicts[b], s) for s in SETS]
            for a, b, factor, va, vb in found]
    if not rows:
        return []
    return (["## One-factor contrasts", "",
             "Pairs of trained variants of one stage whose settings differ in exactly one factor, tested against "
             "each other on the same prompts (the main tables test each row against its starting point only). "
             "Each cell: first row's rate vs second's, the difference (first minus second) with Newcombe's paired "
             "95% interval, the exact McNemar p, the discordant prompts (refused by the first only / the second "
             "only), and whether the first is higher, lower or not distinguishable at p < 0.05 (per comparison, "
             f"not corrected: {len(rows)} pairs x {len(SETS)} rates = {len(rows) * len(SETS)} tests, so about "
             f"{len(rows) * len(SETS) * ALPHA:.0f} would fall below 0.05 by chance where nothing differs). These "
             "are one training run of each variant: `make seeds` tests the same pairs in every training seed "
             "(`leaderboards/<profile>-seeds.md`).", ""]
            + table(["pair", "differs in"] + [metrics.info(s).column for s in SETS], rows, ["l", "l", "l", "l", "l"]) + [""])
