"""Reproduction check: fresh records against the committed ones, within per-metric tolerances.

    make verify PROFILE=default                      # == bench verify --profile default
    bench verify --profile default --variant dpo     # one variant (its training and eval records)
    bench verify --profile default --rescore         # re-score even when runs/ has up-to-date eval records

The committed records are ``leaderboards/<profile>/records/`` (what the leaderboard reports). The
fresh ones are ``runs/<profile>/``: ``bench verify`` first brings the eval records up to date (the
battery skips variants whose eval record matches; ``--rescore`` forces it), so after ``make`` has
re-run the profile's stages the comparison covers every stage. Every committed metric is compared
with the fresh value under the first matching rule of :data:`TOLERANCES`; a metric or a record
missing from the fresh side is a failure too. The exit status is non-zero when anything fails, and
every failing metric is listed.

:func:`compare` is a pure function of two ``{record name: record}`` dicts (tested on hand-made
records); :func:`run_verify` does the I/O.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Callable

from bench.config import ProfileConfig
from bench.records import RecordError, is_eval_key, key_for


@dataclass(frozen=True)
class Tolerance:
    """Accept ``fresh`` when |fresh - committed| <= abs + rel * |committed|, or (``within_ci``) when
    fresh lies inside the committed 95% interval. ``None`` in the table: not compared."""

    abs: float = 0.0
    rel: float = 0.0
    within_ci: bool = False
    why: str = ""

    def describe(self) -> str:
        parts = []
        if self.abs:
            parts.append(f"±{self.abs:g} abs")
        if self.rel:
            parts.append(f"±{self.rel:g} rel")
        if not parts:
            parts.append("exact")
        text = " + ".join(parts)
        return text + (" or within committed CI" if self.within_ci else "")

    def accepts(self, committed: dict, fresh: dict) -> bool:
        c, f = _val(committed), _val(fresh)
        if c is None or f is None:
            return c is None and f is None  # both non-finite: the same (e.g. an undefined interval)
        if abs(f - c) <= self.abs + self.rel * abs(c) + 1e-12:
            return True
        lo, hi = _val(committed, "ci_low"), _val(committed, "ci_high")
        return self.within_ci and lo is not None and hi is not None and lo <= f <= hi


# First matching pattern wins. The rates' tolerance is sampling noise; the log-prob tolerance is
# numerics (teacher-forced on fixed pairs: the same machine and packages give the same numbers up to
# float summation order); greedy-generation-based means get the rates' treatment.
RATE = Tolerance(abs=0.05, within_ci=True, why="rate: a few flipped greedy generations or verdicts")
LOGPROB = Tolerance(abs=1e-3, rel=1e-3, why="teacher-forced log-probs: numerics only, same machine")
SCORE = Tolerance(abs=0.05, rel=0.05, within_ci=True, why="mean score of greedy generations")
TOLERANCES: tuple[tuple[str, Tolerance | None], ...] = (
    ("*wall_time*", None),
    ("*_time_s", None),
    ("param_count", Tolerance(why="architecture")),
    ("trainable_params", Tolerance(why="architecture")),
    ("n_checkpoints", Tolerance(why="count")),
    ("refusal_*", RATE),
    ("over_refusal_*", RATE),
    ("empty_generations", RATE),
    ("pref_acc_*", RATE),
    ("rm_win_rate", RATE),
    ("rm_accuracy", RATE),
    ("cm_*_accuracy", RATE),
    ("select_*", RATE),
    ("lm_eval/*", RATE),
    ("logp_*", LOGPROB),
    ("chosen_shift", LOGPROB),
    ("rejected_shift", LOGPROB),
    ("logratio_to_base", Tolerance(abs=0.02, within_ci=True, why="log-probs of greedy generations")),
    ("reward_*", SCORE),
    ("cost_*", SCORE),
    ("score_*", SCORE),
    ("train_loss", Tolerance(abs=1e-3, rel=0.02, why="training loss: same seed, same machine")),
    ("*", Tolerance(abs=1e-3, rel=0.05, why="default")),
)


def tolerance_for(metric: str, table=TOLERANCES) -> Tolerance | None:
    for pattern, tol in table:
        if fnmatch.fnmatchcase(metric, pattern):
            return tol
    return None


def _val(m: dict | None, key: str = "value") -> float | None:
    v = (m or {}).get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


@dataclass(frozen=True)
class Check:
    record: str
    metric: str
    status: str  # "ok" | "outside" | "missing metric" | "missing record"
    committed: dict | None = None
    fresh: dict | None = None
    tolerance: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def line(self) -> str:
        def show(m):
            if m is None:
                return "–"
            v = _val(m)
            s = "nan" if v is None else f"{v:.6g}"
            lo, hi = _val(m, "ci_low"), _val(m, "ci_high")
            return s + (f" [{lo:.4g}, {hi:.4g}]" if lo is not None and hi is not None else "")

        if self.status == "missing record":
            return f"{self.record}: record missing from the fresh run"
        return (f"{self.record} {self.metric}: {self.status}; committed {show(self.committed)}, "
                f"fresh {show(self.fresh)}; tolerance {self.tolerance}")


def compare(committed: dict[str, dict], fresh: dict[str, dict], table=TOLERANCES) -> list[Check]:
    """One :class:`Check` per committed metric (and per committed record missing from ``fresh``).
    Metrics only the fresh side has are not checked (new metrics do not fail old leaderboards)."""
    checks: list[Check] = []
    for name in sorted(committed):
        crec = committed[name]
        frec = fresh.get(name)
        if frec is None:
            checks.append(Check(name, "*", "missing record"))
            continue
        for metric in sorted(crec.get("metrics") or {}):
            tol = tolerance_for(metric, table)
            if tol is None:
                continue
            cm = crec["metrics"][metric]
            fm = (frec.get("metrics") or {}).get(metric)
            if fm is None:
                checks.append(Check(name, metric, "missing metric", cm, None, tol.describe()))
            else:
                checks.append(Check(name, metric, "ok" if tol.accepts(cm, fm) else "outside", cm, fm, tol.describe()))
    return checks


def select(records: dict[str, dict], variant: str | None) -> dict[str, dict]:
    """The records of one variant (its own and its eval record), or all."""
    if variant is None:
        return dict(records)
    return {k: v for k, v in records.items() if k in (key_for(variant), key_for(variant, "eval"))}


def run_verify(cfg: ProfileConfig, variant: str | None = None, rescore: bool = False,
               progress: Callable[[str], None] = print) -> list[Check]:
    """Bring eval records up to date (or re-score), compare with the committed records, report."""
    from bench.eval.battery import run_eval
    from bench.leaderboard import collect_records, load_committed

    profile = cfg.profile.name
    committed = select(load_committed(profile), variant)
    if not committed:
        raise RecordError(f"leaderboards/{profile}/records has no record for variant '{variant}'")
    for name in sorted(r["variant"] for k, r in committed.items() if is_eval_key(k)):
        try:
            status = run_eval(cfg, variant=name, force=rescore, progress=progress)
            progress(f"verify: {name}: {status.get(name)}")
        except RecordError as e:  # the variant is not in runs/: reported as a missing record below
            progress(f"verify: {name}: cannot score ({e})")
    fresh = select(collect_records(profile), variant)
    checks = compare(committed, fresh)
    bad = [c for c in checks if not c.ok]
    hw_c = {str((r.get("provenance") or {}).get("hardware")) for r in committed.values()}
    hw_f = {str((r.get("provenance") or {}).get("hardware")) for r in fresh.values()}
    if hw_f and hw_c != hw_f:
        progress("verify: note: the fresh records come from other hardware than the committed ones; "
                 "log-prob tolerances assume the same machine")
    progress(f"verify: {len(checks) - len(bad)} of {len(checks)} checks within tolerance "
             f"({len(committed)} committed records)")
    for c in bad:
        progress(f"  FAIL {c.line()}")
    return checks
