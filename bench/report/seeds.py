"""Across-seed table: each variant's headline metrics as the mean over training seeds, the spread
between seeds, and how many seeds carry each paired verdict vs the variant's start.

    make seeds PROFILE=default SEEDS="0 1 2"      # runs every seed, then: bench seeds --profile default
    bench seeds --profile default --seeds "0 1 2"  # render leaderboards/default-seeds.md from the records

What: seed ``s`` of profile ``p`` is the profile itself when ``s`` is its own ``profile.seed``, else
profile ``p-s<s>`` (``make leaderboard SEED=s``: same settings, ``profile.seed`` = s, its own runs/,
records and leaderboard). One record per seed is kept; this module reads the reported records of
each (``leaderboards/<name>/records/``) and renders from them alone, like the leaderboard.

Why: the per-seed leaderboard's intervals are over prompts (evaluation noise) for one trained model;
they say nothing about how much a method's result moves when it is trained again with another data
order, head initialisation or rollout sample. The spread between seeds is that training noise; a
conclusion a reader can rely on holds in every seed (a verdict of "3/3 better"), not in one.

How: for each variant present in every seed and each headline metric: mean over seeds, the sample
standard deviation between seeds (n - 1; with 3 seeds a rough figure: its own relative error is about
50%), min and max, and the per-seed verdicts vs the start (:func:`bench.compare.verdict`: better / worse
/ n.s. at the leaderboard's alpha). Seeds whose record of a variant is missing are named, not skipped.
The leaderboard's one-factor contrasts (:mod:`bench.report.contrasts`: ppo-kl vs ppo-nokl, dpo vs
dpo-lora, ...) are tested again in every seed on that seed's committed samples, so a reader sees which
settings matter in every training run and which only in one.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from bench.metrics import info, lookup, value_of
from bench.records import is_eval_key
from bench.stats import Z95  # a 95% interval spans about 2 x 1.96 standard errors

HEADLINE = ("refusal_harmful", "over_refusal_benign", "over_refusal_borderline", "pref_acc_implicit", "rm_win_rate",
            "cost_harmful", "logratio_to_base")


def seed_profile(profile: str, seed: int, own_seed: int) -> str:
    """The profile name a seed's runs and records live under (the ``NAME`` of the Makefile)."""
    return profile if seed == own_seed else f"{profile}-s{seed}"


@dataclass(frozen=True)
class Cell:
    values: tuple[float, ...]  # one per seed, in seed order
    verdicts: tuple[str, ...]  # "better" | "worse" | "n.s." | "" (no paired test), one per seed
    widths: tuple[float | None, ...] = ()  # each seed's 95% interval width (over prompts); None: no interval
    deltas: tuple[float | None, ...] = ()  # each seed's paired change vs its start (variant - start); None: no test

    @property
    def prompt_sd(self) -> float:
        """The standard error over prompts implied by the per-seed intervals, width / (2 x 1.96), averaged
        over the seeds that have one (NaN when none): what the main leaderboard's intervals account for.
        Beside :attr:`sd`, it says whether retraining moves a number more than re-sampling prompts would."""
        ws = [w / (2 * Z95) for w in self.widths if w is not None]
        return statistics.fmean(ws) if ws else float("nan")

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def sd(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else float("nan")

    @property
    def mean_delta(self) -> float:
        """Mean over seeds of the paired change vs the start (NaN unless every seed has one): the effect a
        method comparison rests on, each seed against its own start."""
        ds = [d for d in self.deltas if d is not None]
        return statistics.fmean(ds) if ds and len(ds) == len(self.deltas) else float("nan")

    def unanimous(self) -> str:
        """``better`` / ``worse`` when every seed's paired test says so, else ``""``."""
        return tally(self.verdicts, ("better", "worse"))[1]

    def flips(self) -> bool:
        """Some seed significantly better and another significantly worse than its start."""
        return "better" in self.verdicts and "worse" in self.verdicts

    def verdict_counts(self) -> str:
        text = tally(self.verdicts, ("better", "worse"))[0]
        return text or ("n.s." if any(self.verdicts) else "–")


def tally(verdicts: tuple[str, ...] | list[str], kinds: tuple[str, str]) -> tuple[str, str]:
    """``("k/n kind, ...", the kind every seed shares or "")`` for per-seed verdicts; the counts text is
    empty when no seed has either kind."""
    n = len(verdicts)
    text = ", ".join(f"{verdicts.count(k)}/{n} {k}" for k in kinds if verdicts.count(k))
    shared = next((k for k in kinds if n and verdicts.count(k) == n), "")
    return text, shared


def across_seeds(per_seed: dict[int, dict[str, dict]], metrics: tuple[str, ...] = HEADLINE
                 ) -> tuple[dict[str, dict[str, Cell]], dict[str, list[int]]]:
    """``({variant: {metric: Cell}}, {variant: seeds missing it})`` from ``{seed: {record key: record}}``.
    Only eval records count; a variant missing from any seed gets no cells, only its missing seeds."""
    from bench.compare import verdict

    seeds = sorted(per_seed)
    variants: dict[str, dict[int, dict]] = {}
    for s in seeds:
        for key, rec in per_seed[s].items():
            if is_eval_key(key):
                variants.setdefault(rec.get("variant") or key, {})[s] = rec
    cells: dict[str, dict[str, Cell]] = {}
    missing: dict[str, list[int]] = {}
    for v, recs in variants.items():
        gone = [s for s in seeds if s not in recs]
        if gone:
            missing[v] = gone
            continue
        row = {}
        for m in metrics:
            vals = [value_of((recs[s].get("metrics") or {}).get(m)) for s in seeds]
            if any(x is None or not math.isfinite(x) for x in vals):
                continue
            meta = lookup(m)
            direction = meta.direction if meta else 0
            paired = [((recs[s].get("extra") or {}).get("paired") or {}).get(m) for s in seeds]
            verdicts = tuple(verdict(e, direction) if e else "" for e in paired)
            deltas = tuple(value_of(e, "delta") if e else None for e in paired)
            widths = []
            for s in seeds:
                metric = (recs[s].get("metrics") or {}).get(m)
                lo, hi = value_of(metric, "ci_low"), value_of(metric, "ci_high")
                widths.append(hi - lo if lo is not None and hi is not None else None)
            row[m] = Cell(tuple(float(x) for x in vals), verdicts, tuple(widths), deltas)
        cells[v] = row
    return cells, missing


def contrasts_across_seeds(per_seed: dict[int, dict[str, dict]], assets: dict[int, Path]
                           ) -> list[tuple[str, str, str, dict[str, list[dict | None]]]]:
    """``[(a, b, "factor: value a / value b", {set: [entry per seed]})]``: the leaderboard's one-factor
    contrasts (:mod:`bench.report.contrasts`), tested in every seed on that seed's committed samples. A
    pair is kept when every seed has it with the same settings (so each seed tests the same question)."""
    from bench.report.contrasts import SETS, contrast, contrast_verdicts

    seeds = sorted(per_seed)
    found = {s: contrast_verdicts(per_seed[s], assets[s]) for s in seeds}
    first = found[seeds[0]][0]
    out = []
    for a, b, factor, va, vb in first:
        if not all((a, b, factor, va, vb) in found[s][0] for s in seeds):
            continue
        entries = {name: [contrast(found[s][1][a], found[s][1][b], name) for s in seeds] for name in SETS}
        out.append((a, b, f"{factor}: {va} / {vb}", entries))
    return out


def _contrast_cell(entries: list[dict | None]) -> str:
    if any(e is None for e in entries):
        return "–"
    each = " / ".join(f"{e['delta']:+.3f}{'' if e['verdict'] == 'not distinguishable' else ' ' + e['verdict']}"
                      for e in entries)
    counts, held = tally([e["verdict"] for e in entries], ("higher", "lower"))
    summary = f"**{held} in every seed**" if held else (counts or "n.s. in every seed")
    return f"{each}: {summary}"


def _contrasts_lines(found: list[tuple[str, str, str, dict[str, list[dict | None]]]], n_seeds: int) -> list[str]:
    from bench.report.contrasts import SETS
    from bench.report.sections import table

    if not found:
        return []
    rows = [[f"`{a}` vs `{b}`", differs] + [_contrast_cell(e[name]) for name in SETS] for a, b, differs, e in found]
    return (["## One-factor contrasts across seeds", "",
             "The main leaderboard's pairs of variants that differ in one setting, tested against each other in "
             "each seed on that seed's samples (exact McNemar on the same prompts, alpha 0.05, uncorrected). Each "
             "cell: the difference of refusal rates (first minus second) per seed, with the seed's verdict where "
             f"significant; bold where all {n_seeds} seeds agree that the first is higher, or lower. A setting "
             "whose effect is significant in one seed and not in the others has not been shown to matter.", ""]
            + table(["pair", "differs in"] + [info(s).column for s in SETS], rows, ["l"] * (2 + len(SETS))) + [""])


def render(profile: str, seeds: list[int], names: dict[int, str], per_seed: dict[int, dict[str, dict]],
           metrics: tuple[str, ...] = HEADLINE, assets: dict[int, Path] | None = None) -> str:
    """``leaderboards/<profile>-seeds.md`` (``assets``: each seed's ``leaderboards/<name>/``, whose committed
    samples the across-seed contrasts test; without it, no contrasts)."""
    from bench.report.sections import table, variant_key

    cells, missing = across_seeds(per_seed, metrics)
    shown = [m for m in metrics if any(m in row for row in cells.values())]
    lines = [f"# Across training seeds: profile `{profile}`", "",
             f"Seeds {', '.join(map(str, seeds))}: " + ", ".join(f"seed {s} = `leaderboards/{names[s]}/records/`"
                                                                  for s in seeds) + ".", "",
             "Each cell: mean over seeds ± standard deviation between seeds (n - 1) [min - max]; each seed's paired "
             "change against its own start (variant - start on the same prompts; the per-seed leaderboards say "
             "which start) and its mean; then how many seeds' paired tests call the variant better / worse than "
             "its start (alpha 0.05). Nothing in the metric tables is bold: no test runs across seeds there. The "
             "spread between seeds is training noise, which the per-seed intervals (over prompts) do not contain. "
             "With 3 seeds the standard deviation is itself rough (about ±50%; with 2, one difference). *sd over "
             "prompts*: the standard error each seed's own 95% interval implies (width / 3.92, mean over seeds); *sd seeds / prompts* well above 1 says retraining "
             "moves that number more than the per-seed leaderboard's intervals allow for, so a single seed's "
             "verdict on it is not to be trusted.", "",
             "Rendered from the records alone: `bench seeds --profile " + profile + " --seeds \"" +
             " ".join(map(str, seeds)) + "\"`.", ""]
    lines += _hardware_lines(per_seed)
    order = sorted(cells, key=lambda v: variant_key(v, "eval"))
    lines += _summary(cells, order, shown, len(seeds))
    for m in shown:
        meta = info(m)
        rows = []
        for v in order:
            c = cells[v].get(m)
            if c is None:
                continue
            d = meta.digits
            ratio = c.sd / c.prompt_sd if c.prompt_sd > 0 else float("nan")
            rows.append([v, f"{c.mean:.{d}f} ± {c.sd:.{d}f} [{min(c.values):.{d}f} - {max(c.values):.{d}f}]",
                         " / ".join(f"{x:.{d}f}" for x in c.values),
                         f"{c.prompt_sd:.{d}f}" if math.isfinite(c.prompt_sd) else "–",
                         f"{ratio:.1f}" if math.isfinite(ratio) else "–", _deltas(c, d), c.verdict_counts()])
        lines += [f"## {meta.column}{meta.arrow}", "", meta.definition, ""]
        lines += table(["variant", "mean ± sd [min - max]", "per seed (" + ", ".join(map(str, seeds)) + ")",
                        "sd over prompts", "sd seeds / prompts", "change vs start per seed", "verdicts vs start"],
                        rows, ["l", "r", "r", "r", "r", "r", "l"]) + [""]
    if assets:
        lines += _contrasts_lines(contrasts_across_seeds(per_seed, assets), len(seeds))
    if missing:
        lines += ["## Missing", ""]
        lines += [f"- {v}: no eval record in seed(s) {', '.join(map(str, s))}" for v, s in sorted(missing.items())]
        lines.append("")
    return "\n".join(lines)


def compute_of(records: dict[str, dict]) -> str:
    """What a seed's eval records ran on: precision and the CPU's native-bf16 flags (``provenance``), e.g.
    ``bf16 on avx512_bf16``; several values joined by " | " when its records disagree."""
    seen = []
    for key, rec in sorted(records.items()):
        if not is_eval_key(key):
            continue
        prov = rec.get("provenance") or {}
        flags = (prov.get("hardware") or {}).get("cpu_native_bf16")
        text = f"{prov.get('precision', '?')} on {'+'.join(flags) if flags else 'no native bf16'}"
        if text not in seen:
            seen.append(text)
    return " | ".join(seen) or "unknown"


def _hardware_lines(per_seed: dict[int, dict[str, dict]]) -> list[str]:
    """Each seed's compute; a warning when they differ: bf16 kernels (AMX vs AVX512-BF16) round differently,
    greedy answers drift from there, and trained models carry the drift, so the spread between such seeds
    holds the kernels' numerics as well as the training seed. The untrained base row shows the kernels'
    effect alone."""
    compute = {s: compute_of(per_seed[s]) for s in sorted(per_seed)}
    lines = ["Compute: " + "; ".join(f"seed {s}: {c}" for s, c in compute.items()) + ".", ""]
    if len(set(compute.values())) > 1:
        lines += ["**The seeds did not all run on the same bf16 kernels.** A different kernel rounds differently "
                  "and greedy answers drift from there; a trained variant carries that drift through training, so "
                  "the spread between these seeds holds the kernels' numerics as well as the training seed. The "
                  "untrained `base` row moves by the kernels alone.", ""]
    return lines


def _deltas(c: Cell, digits: int) -> str:
    if not c.deltas or all(x is None for x in c.deltas):
        return "–"
    each = " / ".join("–" if x is None else f"{x:+.{digits}f}" for x in c.deltas)
    return each + (f" (mean {c.mean_delta:+.{digits}f})" if math.isfinite(c.mean_delta) else "")


def _summary(cells: dict[str, dict[str, Cell]], order: list[str], shown: list[str], n_seeds: int) -> list[str]:
    """Which paired verdicts hold in every seed, and which point opposite ways in different seeds: the
    conclusions a reader may draw from the per-seed leaderboards, and the ones they may not."""
    held, flipped = [], []
    for v in order:
        for m in shown:
            c = cells[v].get(m)
            if c is None:
                continue
            name = info(m).column
            if c.unanimous():
                held.append(f"{v}: {c.unanimous()} on {name}: {_deltas(c, info(m).digits)}")
            elif c.flips():
                flipped.append(f"{v}: {name}, {c.verdict_counts()}: {_deltas(c, info(m).digits)}")
    out = [f"## Verdicts vs start that hold in all {n_seeds} seeds", ""]
    out += [f"- {x}" for x in held] or ["- none"]
    out += ["", "## Verdicts that point opposite ways in different seeds", ""]
    out += [f"- {x}" for x in flipped] or ["- none"]
    out += ["", "Every other verdict is significant in some seeds and not in others, or in none: see the tables.", ""]
    return out
