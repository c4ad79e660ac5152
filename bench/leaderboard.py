"""Leaderboard: run records -> ``leaderboards/<profile>.md`` (+ plots), byte-for-byte reproducible.

    make leaderboard PROFILE=default                   # runs missing stages, then:
    bench leaderboard --profile default                # copy records, render
    bench leaderboard --profile default --from-records # re-render from the committed copies only

Two steps:

1. :func:`copy_records` copies every record of ``runs/<profile>/`` (training, steering, eval) into
   ``leaderboards/<profile>/records/`` (``<variant>.json``, ``eval/<variant>.json``), pruned of bulky
   fields (``extra.log_history``), and the steering audit's PNG into ``leaderboards/<profile>/``.
   These copies are committed: they are the reported numbers.
2. :func:`render` builds the markdown from those copies alone (so a clone without ``runs/`` can
   re-render it): the main tables (variants x metrics with 95% intervals, best per column in bold,
   an arrow per column saying whether higher or lower is better), the metric definitions, the RM/CM
   table, the steering audit, the refusal detector's per-class agreement on its labelled set
   (computed at render time: it is fast and shows the detector the code has now), training series
   plots, a provenance footer and the commands that reproduce the file.

Nothing in the output depends on when or where it is rendered: no render timestamps, every list
sorted, PNGs written without a software/date stamp. Rendering twice gives identical bytes.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bench.config import REPO_ROOT
from bench.io import atomic_write_bytes, atomic_write_text
from bench.plots import save_png
from bench.records import RecordError, read_record, record_key
from bench.runs import iter_records, runs_root, stage_rank

LEADERBOARD_ROOT = REPO_ROOT / "leaderboards"
RECORDS_DIR = "records"
AUDIT_PNG = "steer_audit.png"
SERIES_PNG = "series.png"
TRACKING_PNG = "tracking.png"
PRUNE_EXTRA = ("log_history",)  # bulky and not rendered; the run dir keeps the full record


# =========================================================================== metric catalogue


@dataclass(frozen=True)
class MetricInfo:
    title: str
    direction: int  # +1 higher is better, -1 lower is better, 0 neither (a diagnostic)
    digits: int
    definition: str


METRICS: dict[str, MetricInfo] = {
    "refusal_harmful": MetricInfo(
        "refusal (harmful)", +1, 3,
        "Share of greedy generations on held-out harmful prompts that the refusal detector classifies as a "
        "refusal (full or partial)."),
    "over_refusal_benign": MetricInfo(
        "over-refusal (benign)", -1, 3,
        "The same share on held-out benign prompts: refusing these is over-refusal."),
    "over_refusal_borderline": MetricInfo(
        "over-refusal (borderline)", -1, 3,
        "The same share on borderline-safe prompts (XSTest-style: safe requests that look unsafe)."),
    "refusal_unsafe_contrast": MetricInfo(
        "refusal (unsafe contrast)", +1, 3,
        "The same share on the unsafe contrast prompts paired with the borderline set."),
    "pref_acc_implicit": MetricInfo(
        "pref. acc. (implicit)", +1, 3,
        "Share of held-out preference pairs where the implicit reward log pi(y|x) - log pi_base(y|x) of the "
        "chosen response exceeds the rejected one's (Rafailov et al. 2023, eq. 5, up to beta)."),
    "pref_acc_raw": MetricInfo(
        "pref. acc. (raw)", +1, 3,
        "Share of held-out pairs with log pi(y_chosen|x) > log pi(y_rejected|x)."),
    "logp_margin_sum": MetricInfo(
        "log-prob margin (sum)", +1, 2,
        "Mean of log pi(y_chosen|x) - log pi(y_rejected|x), summed over response tokens."),
    "logp_margin_per_token": MetricInfo(
        "log-prob margin (per token)", +1, 3,
        "The same with each log-probability divided by its response length."),
    "chosen_shift": MetricInfo(
        "chosen shift", 0, 2,
        "Mean of log pi(y_chosen|x) - log pi_base(y_chosen|x): how far the chosen responses moved."),
    "rejected_shift": MetricInfo(
        "rejected shift", 0, 2,
        "Mean of log pi(y_rejected|x) - log pi_base(y_rejected|x). A margin that grew only because this "
        "went down, with refusal rates flat, is the failure mode to look for."),
    "rm_win_rate": MetricInfo(
        "RM win rate vs base", +1, 3,
        "Share of held-out helpfulness prompts where the reward model scores the variant's greedy answer "
        "above the base policy's (ties count half)."),
    "reward_helpfulness": MetricInfo(
        "RM reward (helpfulness)", +1, 2, "Mean reward-model score of the variant's answers to helpfulness prompts."),
    "reward_harmful": MetricInfo(
        "RM reward (harmful)", 0, 2, "Mean reward-model score of the variant's answers to harmful prompts."),
    "cost_harmful": MetricInfo(
        "CM cost (harmful)", -1, 2,
        "Mean cost-model score of the variant's answers to harmful prompts (> 0 reads as unsafe)."),
    "cost_helpfulness": MetricInfo(
        "CM cost (helpfulness)", -1, 2, "Mean cost-model score of the variant's answers to helpfulness prompts."),
    "logratio_to_base": MetricInfo(
        "log-ratio to base / token", 0, 3,
        "Mean over the variant's greedy helpfulness answers y of [log pi(y|x) - log pi_base(y|x)] / |y|. "
        "y is the greedy answer, not a sample, so this is a drift measure, not an unbiased KL estimate."),
    "empty_generations": MetricInfo(
        "empty generations", -1, 3,
        "Share of refusal-set generations that are empty (the detector counts them as compliance)."),
}
for _set, _title in (("refusal_harmful", "harmful"), ("over_refusal_benign", "benign"),
                     ("over_refusal_borderline", "borderline"), ("refusal_unsafe_contrast", "unsafe contrast")):
    METRICS[f"{_set}_full"] = MetricInfo(f"full refusal ({_title})", 0, 3,
                                         f"Share of generations on {_title} prompts labelled 'refuse'.")
    METRICS[f"{_set}_partial"] = MetricInfo(f"partial refusal ({_title})", 0, 3,
                                            f"Share of generations on {_title} prompts labelled 'partial' "
                                            f"(declines part, helps with a safe part).")

SCORE_METRICS: dict[str, MetricInfo] = {
    "rm_accuracy": MetricInfo("RM accuracy", +1, 3, "Share of held-out pairs where the RM scores the better "
                                                    "(more helpful) response higher."),
    "cm_pair_accuracy": MetricInfo("CM pairwise accuracy", +1, 3, "Share of held-out pairs where the CM gives the "
                                                                  "safer response the lower cost."),
    "cm_sign_accuracy": MetricInfo("CM sign accuracy", +1, 3, "Share of held-out responses with cost > 0 exactly "
                                                              "when labelled unsafe."),
    "score_chosen": MetricInfo("mean score, better", 0, 2, "Mean RM score of the better responses."),
    "score_rejected": MetricInfo("mean score, worse", 0, 2, "Mean RM score of the worse responses."),
    "score_safer": MetricInfo("mean cost, safer", 0, 2, "Mean CM cost of the safer responses."),
    "score_unsafer": MetricInfo("mean cost, less safe", 0, 2, "Mean CM cost of the less safe responses."),
    "score_safe": MetricInfo("mean score, safe", 0, 2, "Mean score of responses labelled safe."),
    "score_unsafe": MetricInfo("mean score, unsafe", 0, 2, "Mean score of responses labelled unsafe."),
}

TABLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Safety", ("refusal_harmful", "over_refusal_benign", "over_refusal_borderline", "refusal_unsafe_contrast")),
    ("Preference", ("pref_acc_implicit", "pref_acc_raw", "logp_margin_sum", "logp_margin_per_token",
                    "chosen_shift", "rejected_shift")),
    ("Helpfulness", ("@lm_eval", "rm_win_rate", "reward_helpfulness", "reward_harmful", "cost_harmful",
                     "cost_helpfulness", "logratio_to_base")),
    ("Refusal breakdown (full / partial)", tuple(f"{s}_{k}" for s in (
        "refusal_harmful", "over_refusal_benign", "over_refusal_borderline", "refusal_unsafe_contrast")
        for k in ("full", "partial")) + ("empty_generations",)),
)
ARROW = {+1: " ↑", -1: " ↓", 0: ""}
# Series keys plotted first (issue 12's tracking metrics), then the rest alphabetically.
SERIES_PRIORITY = ("refusal_harmful", "over_refusal_benign", "pref_acc_implicit", "pref_acc_raw",
                   "logp_margin_per_token", "logp_margin_sum", "loss")
SERIES_SKIP = ("step", "epoch", "fraction", "time", "wall_time_s", "learning_rate", "grad_norm")
MAX_SERIES_PANELS = 9


def metric_info(name: str) -> MetricInfo:
    if name in METRICS:
        return METRICS[name]
    if name in SCORE_METRICS:
        return SCORE_METRICS[name]
    if name.startswith("lm_eval/"):
        _, task, metric = name.split("/", 2)
        return MetricInfo(f"{task} {metric}", +1, 3,
                          f"lm-evaluation-harness task `{task}`, metric `{metric}` (mean over the task's documents; "
                          f"task defined in tasks/helpfulness/ when it is one of the project's).")
    return MetricInfo(name, 0, 3, "")


# =========================================================================== copying records


def prune_record(rec: dict) -> dict:
    out = copy.deepcopy(rec)
    extra = out.get("extra")
    if isinstance(extra, dict):
        for k in PRUNE_EXTRA:
            extra.pop(k, None)
    return out


def collect_records(profile: str, root: Path | None = None) -> dict[str, dict]:
    """``{relative file name: pruned record}`` for every readable record of ``runs/<profile>``:
    ``<variant>.json`` for stage records, ``eval/<variant>.json`` for the battery's."""
    return {record_key(rec): prune_record(rec) for rec in iter_records(profile, root)}


def leaderboard_paths(profile: str, root: Path | None = None) -> tuple[Path, Path, Path]:
    """(markdown file, assets dir, records dir)."""
    root = Path(root) if root is not None else LEADERBOARD_ROOT
    return root / f"{profile}.md", root / profile, root / profile / RECORDS_DIR


def copy_records(profile: str, runs: Path | None = None, out_root: Path | None = None) -> list[str]:
    """Replace ``leaderboards/<profile>/records/`` with the pruned records of ``runs/<profile>`` and
    copy the steering audit PNG. Returns the copied record names."""
    recs = collect_records(profile, runs)
    if not recs:
        raise RecordError(f"no records under {Path(runs) if runs else runs_root() / profile}; run `make eval PROFILE={profile}`")
    _, assets, rec_dir = leaderboard_paths(profile, out_root)
    rec_dir.mkdir(parents=True, exist_ok=True)
    for old in sorted(rec_dir.rglob("*.json")):
        if str(old.relative_to(rec_dir)) not in recs:
            old.unlink()
    for name, rec in sorted(recs.items()):
        text = json.dumps(rec, indent=2, sort_keys=True, default=str) + "\n"
        path = rec_dir / name
        if not path.exists() or path.read_text() != text:
            atomic_write_text(path, text)
    plot = None
    for rec in recs.values():
        p = (rec.get("artifacts") or {}).get("audit_plot")
        if p and Path(p).exists():
            plot = Path(p)
    if plot is not None:
        atomic_write_bytes(assets / AUDIT_PNG, plot.read_bytes())
    return sorted(recs)


def load_committed(profile: str, out_root: Path | None = None) -> dict[str, dict]:
    _, _, rec_dir = leaderboard_paths(profile, out_root)
    if not rec_dir.exists():
        raise RecordError(f"{rec_dir}: no committed records (run `bench leaderboard --profile {profile}` first)")
    return {str(p.relative_to(rec_dir)): read_record(p) for p in sorted(rec_dir.rglob("*.json"))}


# =========================================================================== formatting helpers


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_metric(m: dict | None, digits: int, bold: bool = False) -> str:
    if not m or not _finite(m.get("value")):
        return "–"
    v = f"{m['value']:.{digits}f}"
    if bold:
        v = f"**{v}**"
    lo, hi = m.get("ci_low"), m.get("ci_high")
    if _finite(lo) and _finite(hi):
        v += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return v


def _table(headers: list[str], rows: list[list[str]], align: list[str] | None = None) -> list[str]:
    align = align or ["l"] + ["r"] * (len(headers) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join(sep) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def _variant_key(name: str, stage: str) -> tuple:
    return (name != "base", stage_rank(stage), name)


def _best(values: list[float | None], direction: int) -> set[int]:
    idx = [i for i, v in enumerate(values) if _finite(v)]
    if direction == 0 or len(idx) < 2:
        return set()
    target = max(values[i] for i in idx) if direction > 0 else min(values[i] for i in idx)
    return {i for i in idx if values[i] == target}


def _n_text(ns: set) -> str:
    ns = sorted(n for n in ns if isinstance(n, int))
    return "/".join(str(n) for n in ns) if ns else "–"


# =========================================================================== sections


def _eval_rows(records: dict[str, dict]) -> list[dict]:
    rows = [r for k, r in records.items() if k.startswith("eval/")]
    return sorted(rows, key=lambda r: _variant_key(r["variant"], (r.get("extra") or {}).get("scored", {}).get("stage", "")))


def _main_tables(evals: list[dict]) -> tuple[list[str], list[str]]:
    """Markdown lines of the main tables, and the metric names shown (for the definitions)."""
    lines: list[str] = []
    shown: list[str] = []
    lm_cols = sorted({k for r in evals for k in r["metrics"] if k.startswith("lm_eval/")})
    for title, cols in TABLES:
        names: list[str] = []
        for c in cols:
            names += lm_cols if c == "@lm_eval" else [c]
        names = [c for c in names if any(c in r["metrics"] for r in evals)]
        if not names:
            continue
        shown += names
        headers = ["variant", "stage"] + [metric_info(c).title + ARROW[metric_info(c).direction] for c in names]
        cells = [[r["variant"], (r.get("extra") or {}).get("scored", {}).get("stage", "–")] for r in evals]
        for c in names:
            info = metric_info(c)
            vals = [(r["metrics"].get(c) or {}).get("value") for r in evals]
            best = _best(vals, info.direction)
            for i, r in enumerate(evals):
                cells[i].append(fmt_metric(r["metrics"].get(c), info.digits, i in best))
        lines += [f"### {title}", ""] + _table(headers, cells, ["l", "l"] + ["r"] * len(names)) + [""]
    return lines, shown


def _definitions(shown: list[str], evals: list[dict], detector: str) -> list[str]:
    rows = []
    for c in shown:
        info = metric_info(c)
        better = {+1: "higher", -1: "lower", 0: "–"}[info.direction]
        ns = {(r["metrics"].get(c) or {}).get("n") for r in evals}
        rows.append([f"`{c}`", info.title, better, _n_text(ns), info.definition])
    lines = ["## Metric definitions", "",
             "Every rate comes with n and a 95% Wilson score interval; every mean with a 95% normal-approximation "
             "interval (mean ± 1.96 sd/√n). Refusal rates are the share of greedy generations (temperature 0, "
             f"KV cache) that the refusal detector ({detector}) classifies as refusals. Best value per column in "
             "**bold** (↑ higher is better, ↓ lower is better; columns without an arrow are diagnostics).", ""]
    return lines + _table(["metric", "column", "better", "n", "definition"], rows, ["l", "l", "l", "r", "l"]) + [""]


def _score_table(records: dict[str, dict]) -> list[str]:
    rows = []
    for kind in ("reward", "cost"):
        rec = records.get(f"{kind}.json")
        if rec is None:
            continue
        for name in [k for k in SCORE_METRICS if k in rec["metrics"]]:
            m = rec["metrics"][name]
            info = SCORE_METRICS[name]
            rows.append([kind, info.title + ARROW[info.direction], fmt_metric(m, info.digits),
                         str(m.get("n") if m.get("n") is not None else "–"), info.definition])
    if not rows:
        return ["## Reward and cost models", "", "No reward or cost model in this profile's records.", ""]
    return (["## Reward and cost models", "",
             "Held-out (test split) metrics of the score models that judge the policies above.", ""]
            + _table(["model", "metric", "value [95% CI]", "n", "definition"], rows, ["l", "l", "r", "r", "l"]) + [""])


def _audit_section(records: dict[str, dict], assets: Path, profile: str) -> list[str]:
    rec = records.get("steer-audit.json")
    lines = ["## Steering: refusal-direction audit", ""]
    steered = [r for k, r in sorted(records.items()) if not k.startswith("eval/")
               and r.get("stage") == "steer" and (r.get("artifacts") or {}).get("steering")]
    for r in steered:
        s = r["artifacts"]["steering"]
        alpha = f", alpha {s['alpha']}" if s.get("alpha") is not None else ""
        gate = ""
        if s.get("gate"):  # steer-gated (bench.steer.gate): fitted on train prompts only
            kept = ", ".join(f"{k} {m['value'] * m['n']:.0f}/{m['n']}" for k in ("harmful", "benign", "borderline")
                             if (m := (r.get("metrics") or {}).get(f"gate_kept_{k}_train")))
            gate = (f", only where the prompt-end read-out at layer {s['gate']['layer']} is below "
                    f"{s['gate']['threshold']:.2f} (gate fitted on train prompts; held-out train prompts left "
                    f"unablated: {kept})")
        lines.append(f"- `{r['variant']}`: {s.get('mode')} at layer {s.get('layer')}, position {s.get('position')}"
                     f"{alpha}{gate} (config {r['config_hash']}).")
    if steered:
        lines.append("")
    if rec is None or (rec.get("extra") or {}).get("audit") is None:
        return lines + ["No steering audit in this profile's records.", ""]
    try:
        from bench.steer.audit import audit_markdown
    except ImportError:
        lines += ["(bench.steer.audit is not available, so the audit table is not rendered.)", ""]
    else:
        lines += [audit_markdown(rec["extra"]["audit"]).rstrip(), ""]
    if (assets / AUDIT_PNG).exists():
        lines += [f"![steering audit]({profile}/{AUDIT_PNG})", ""]
    return lines


def detector_agreement() -> dict:
    """Per-class agreement of the current detector with its labelled set (fast; stdlib only)."""
    from bench.eval import refusal

    rows = refusal.load_labelled(refusal.labelled_set_path())
    out = refusal.agreement(rows, refusal.detect_many(r["completion"] for r in rows))
    out["detector"] = {"name": refusal.DETECTOR_NAME, "version": refusal.DETECTOR_VERSION}
    return out


def _detector_section(agreement: dict, evals: list[dict]) -> list[str]:
    from bench.stats import rate_metric

    det = agreement["detector"]
    classes = ("comply", "refuse", "partial")
    rows = []
    for c in list(classes) + ["overall"]:
        a = agreement[c]
        rows.append([c, str(a["n"]), str(a["agree"]), fmt_metric(rate_metric(a["agree"], a["n"]), 3)])
    conf = [[t] + [str(agreement["confusion"][t][p]) for p in classes] for t in classes]
    used = sorted({f"{(r.get('extra') or {}).get('detector', {}).get('name')} "
                   f"{(r.get('extra') or {}).get('detector', {}).get('version')}" for r in evals})
    lines = ["## Refusal detector", "",
             f"`{det['name']}` version {det['version']} (bench/eval/refusal.py), agreement with the human labels of "
             "tasks/refusal_detector/labelled.jsonl, per class (95% Wilson intervals). In-set agreement is an upper "
             "bound: the rules were written with this set in view.", ""]
    lines += _table(["human label", "n", "agree", "agreement [95% CI]"], rows) + [""]
    lines += ["Confusion (rows: human label, columns: detector):", ""]
    lines += _table(["human \\ detector", *classes], conf) + [""]
    if used:
        lines.append("Detector recorded in the eval records: " + ", ".join(f"`{u}`" for u in used) + ".")
        current = f"{det['name']} {det['version']}"
        if any(u != current for u in used):
            lines.append(f"**Warning:** some records were scored with another detector version than the current "
                         f"`{current}`; their refusal rates are not comparable (re-run `make eval`).")
        lines.append("")
    return lines


def _series_points(rec: dict) -> list[dict]:
    s = (rec.get("extra") or {}).get("series")
    return [p for p in s if isinstance(p, dict)] if isinstance(s, list) else []


def _num(v: Any) -> float | None:
    if isinstance(v, dict):
        v = v.get("value")
    return float(v) if _finite(v) else None


def series_keys(records: dict[str, dict]) -> list[str]:
    keys: set[str] = set()
    for k, rec in records.items():
        for p in _series_points(rec):
            keys |= {name for name, v in p.items() if name not in SERIES_SKIP and _num(v) is not None}
    ordered = [k for k in SERIES_PRIORITY if k in keys] + sorted(keys - set(SERIES_PRIORITY))
    return ordered[:MAX_SERIES_PANELS]


def plot_series(records: dict[str, dict], path: Path) -> Path | None:
    """One panel per tracked key, one line per variant (x = step). None when no record has a series."""
    keys = series_keys(records)
    with_series = sorted(((rec["variant"], rec) for k, rec in records.items()
                          if not k.startswith("eval/") and _series_points(rec)),
                         key=lambda t: _variant_key(t[0], t[1]["stage"]))
    if not keys or not with_series:
        return None

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.4 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for name, rec in with_series:
            pts = [(p.get("step"), _num(p.get(key))) for p in _series_points(rec)]
            pts = [(x, y) for x, y in pts if _finite(x) and y is not None]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", ms=2.5, lw=1.2, label=name)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    return save_png(fig, path, legend_room=0.06)


def _series_section(records: dict[str, dict], assets: Path, profile: str, write_plots: bool) -> list[str]:
    names = sorted((rec["variant"] for k, rec in records.items() if not k.startswith("eval/") and _series_points(rec)),
                   key=lambda n: _variant_key(n, records.get(f"{n}.json", {}).get("stage", "")))
    if not names:
        return []
    path = assets / SERIES_PNG
    if write_plots:
        plot_series(records, path)
    lines = ["## Training logs", "",
             f"Logged along training (x = optimiser step), one line per variant: {', '.join(f'`{n}`' for n in names)}; "
             f"panels: {', '.join(f'`{k}`' for k in series_keys(records))}.", ""]
    if path.exists():
        lines += [f"![training series]({profile}/{SERIES_PNG})", ""]
    return lines


def _tracking_section(records: dict[str, dict], assets: Path, profile: str, write_plots: bool) -> list[str]:
    """Issue 12's validation pass at kept checkpoints (``extra.tracking.series``), rendered by
    :mod:`bench.train.tracking` (its plot and table), when that module is there."""
    try:
        from bench.train import tracking
    except ImportError:
        return []
    train = {k: r for k, r in sorted(records.items()) if not k.startswith("eval/")}
    if not tracking.tracked_records(train):
        return []
    path = assets / TRACKING_PNG
    if write_plots:
        tracking.plot_series(train, path)
    lines = ["## Tuning dynamics", "",
             "A small validation pass at each kept checkpoint of a run (bench/train/tracking.py): refusal rates, "
             "preference accuracy and log-prob margins as training progresses, one line per variant.", ""]
    if path.exists():
        lines += [f"![tuning dynamics]({profile}/{TRACKING_PNG})", ""]
    return lines + tracking.series_table(train) + [""]


def _onpolicy_section(records: dict[str, dict]) -> list[str]:
    """What the DPO variants trained on: the starting policy's behaviour on the training prompts
    (from the ``onpolicy`` record) and each variant's count of on-policy vs written rejected responses."""
    gen = next((r for r in records.values() if r.get("stage") == "onpolicy"), None)
    dpo = sorted((r for k, r in records.items() if r.get("stage") == "dpo" and not k.startswith("eval/")),
                 key=lambda r: r["variant"])
    if gen is None and not any((r.get("extra") or {}).get("rejected_sources") for r in dpo):
        return []
    lines = ["## DPO training pairs", ""]
    if gen is not None:
        m, c = gen.get("metrics") or {}, (gen.get("extra") or {}).get("counts") or {}
        lines += ["The starting policy answered "
                  f"{c.get('prompts', '–')} training prompts greedily (bench/train/onpolicy.py); the refusal detector "
                  "judged its answers and the chosen demonstrations:", ""]
        lines += _table(["", "rate", "n"], [
            ["refuses where the demonstration refuses", fmt_metric(m.get("policy_refusal_where_demo_refuses"), 3),
             str(c.get("demo_refuses", "–"))],
            ["refuses where the demonstration helps", fmt_metric(m.get("policy_refusal_where_demo_helps"), 3),
             str(c.get("demo_helps", "–"))]], ["l", "r", "r"]) + [""]
    rows = []
    for r in dpo:
        ex = r.get("extra") or {}
        src = ex.get("rejected_sources")  # absent in records from before on-policy pairs existed
        rows.append([f"`{r['variant']}`", str((ex.get("variant") or {}).get("rejected", "offline")),
                     str(src.get("on_policy", 0)) if src else "–", str(src.get("offline", 0)) if src else "–",
                     str(ex.get("train_pairs", "–"))])
    if rows:
        lines += ["Rejected responses per variant: the policy's own answer (on-policy) or the dataset's written one.", ""]
        lines += _table(["variant", "rejected", "on-policy", "written", "pairs"], rows, ["l", "l", "r", "r", "r"]) + [""]
    return lines


def _stage_times(records: dict[str, dict]) -> list[str]:
    """Wall time summed per stage (issue 8 asks for it): the records' own ``wall_time_s``."""
    per: dict[str, list[float]] = {}
    for r in records.values():
        if _finite(r.get("wall_time_s")):
            per.setdefault(r["stage"], []).append(float(r["wall_time_s"]))
    if not per:
        return []
    order = sorted(per, key=lambda st: (stage_rank(st), st))
    rows = [[st, str(len(per[st])), f"{sum(per[st]):.0f}"] for st in order]
    total = sum(sum(v) for v in per.values())
    rows.append(["**total**", str(sum(len(v) for v in per.values())), f"**{total:.0f}** ({total / 60:.1f} min)"])
    return (["## Wall time per stage", "",
             "Sum of the records' own wall times (seconds; set-up and Make's overhead not included). The machine "
             "and threads are in the hardware list below.", ""]
            + _table(["stage", "records", "wall s"], rows, ["l", "r", "r"]) + [""])


def _provenance(records: dict[str, dict], profile: str) -> list[str]:
    recs = sorted(records.items(), key=lambda kv: (kv[0].startswith("eval/"),
                                                   _variant_key(kv[1]["variant"], kv[1]["stage"])))
    rows = []
    for key, r in recs:
        prov = r.get("provenance") or {}
        git = prov.get("git") or {}
        sha = (git.get("sha") or "–")[:12] + (" (dirty)" if git.get("dirty") else "")
        wall = r.get("wall_time_s")
        rows.append([key[:-5], r["stage"], r["config_hash"], sha, str(r.get("seed", "–")), prov.get("date") or "–",
                     f"{wall:.1f}" if _finite(wall) else "–"])
    lines = ["## Provenance", "",
             "One row per record rendered here (copies in "
             f"`leaderboards/{profile}/{RECORDS_DIR}/`); wall time is the stage's own, in seconds.", ""]
    lines += _table(["record", "stage", "config hash", "git", "seed", "date (UTC)", "wall s"], rows,
                    ["l", "l", "l", "l", "r", "l", "r"]) + [""]
    pk: dict[str, set] = {}
    for _, r in recs:
        for name, ver in ((r.get("provenance") or {}).get("packages") or {}).items():
            pk.setdefault(name, set()).add(str(ver))
    if pk:
        lines += ["Package versions (all values seen across the records):", ""]
        lines += _table(["package", "version"], [[n, ", ".join(sorted(v))] for n, v in sorted(pk.items())], ["l", "l"])
        lines.append("")
    hw = sorted({json.dumps((r.get("provenance") or {}).get("hardware") or {}, sort_keys=True) for _, r in recs})
    if hw:
        lines += ["Hardware:", ""]
        for h in hw:
            d = json.loads(h)
            lines.append("- " + ", ".join(f"{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in sorted(d.items())))
        lines.append("")
    shas = sorted({((r.get("provenance") or {}).get("git") or {}).get("sha") or "" for _, r in recs} - {""})
    dirty = any(((r.get("provenance") or {}).get("git") or {}).get("dirty") for _, r in recs)
    lines += ["## Reproduce", "", "```sh"]
    if len(shas) == 1:
        lines.append(f"git checkout {shas[0]}")
    lines += ["make setup", f"make leaderboard PROFILE={profile}   # runs every missing stage, then renders this file",
              f"make verify PROFILE={profile}        # re-scores and compares with the committed records",
              f"bench leaderboard --profile {profile} --from-records   # re-render from leaderboards/{profile}/{RECORDS_DIR}/",
              "```", ""]
    if len(shas) > 1:
        lines += ["The records come from several commits: " + ", ".join(f"`{s[:12]}`" for s in shas) + ".", ""]
    if dirty:
        lines += ["Some records were produced from a working tree with uncommitted changes (marked dirty above).", ""]
    return lines


# =========================================================================== render


def render(profile: str, records: dict[str, dict], assets: Path, agreement: dict | None = None,
           write_plots: bool = True) -> str:
    """The leaderboard markdown from ``records`` (``{relative name: record}`` as committed) alone.
    ``assets`` is ``leaderboards/<profile>/`` (audit PNG read from it, series PNG written to it)."""
    if agreement is None:
        agreement = detector_agreement()
    evals = _eval_rows(records)
    det = f"`{agreement['detector']['name']}` {agreement['detector']['version']}"
    lines = [f"# Leaderboard: profile `{profile}`", "",
             "Generated by `bench leaderboard` from the run records in "
             f"`leaderboards/{profile}/{RECORDS_DIR}/`; do not edit by hand. Each policy variant (a checkpoint, or a "
             "steered view of the base) is scored by the same battery (bench/eval/battery.py) on held-out data.", ""]
    lines += ["## Main results", ""]
    if evals:
        main, shown = _main_tables(evals)
        lines += main
    else:
        shown = []
        lines += ["No eval records yet (run `make eval`).", ""]
    notes = sorted({f"`{r['variant']}`: {n}" for r in evals for n in (r.get("extra") or {}).get("notes") or []})
    if notes:
        lines += ["Notes from the battery:", ""] + [f"- {n}" for n in notes] + [""]
    lines += _definitions(shown, evals, det)
    lines += _score_table(records)
    lines += _audit_section(records, assets, profile)
    lines += _detector_section(agreement, evals)
    lines += _onpolicy_section(records)
    lines += _tracking_section(records, assets, profile, write_plots)
    lines += _series_section(records, assets, profile, write_plots)
    lines += _stage_times(records)
    lines += _provenance(records, profile)
    return "\n".join(lines).rstrip() + "\n"


def write_leaderboard(profile: str, from_records: bool = False, out_root: Path | None = None,
                      runs: Path | None = None, progress: Callable[[str], None] = print) -> Path:
    """Copy records (unless ``from_records``) and render ``leaderboards/<profile>.md``."""
    md, assets, _ = leaderboard_paths(profile, out_root)
    if not from_records:
        names = copy_records(profile, runs, out_root)
        progress(f"leaderboard: {len(names)} records copied to {assets / RECORDS_DIR}")
    records = load_committed(profile, out_root)
    assets.mkdir(parents=True, exist_ok=True)
    text = render(profile, records, assets)
    if not md.exists() or md.read_text() != text:
        atomic_write_text(md, text)
    progress(f"leaderboard: {md}")
    return md


def remove_assets(profile: str, out_root: Path | None = None) -> None:
    """Delete a profile's rendered leaderboard and its copies (used by tests)."""
    md, assets, _ = leaderboard_paths(profile, out_root)
    md.unlink(missing_ok=True)
    shutil.rmtree(assets, ignore_errors=True)
