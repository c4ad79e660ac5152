"""Training series of the reported records as figures and a table, for the leaderboard.

    bench leaderboard --profile default    # writes leaderboards/default/series.png and tracking.png

Two kinds of series, both read from records alone (no training code is imported):

- training logs, ``extra.series``: what a stage logged along training (loss, refusal rate, ...),
  one panel per key, one line per variant, x = optimiser step (:func:`plot_series`);
- tuning dynamics, ``extra.tracking.series``: the small validation pass at the checkpoints a DPO or
  PPO run kept (``keep_checkpoints``, bench/train/tracking.py writes them), four panels against the
  fraction of training with 95% bands (:func:`plot_tracking`) and one table row per kept checkpoint
  (:func:`tracking_table`).

PNGs go through :func:`bench.plots.save_png` (no timestamps), so rendering twice gives the same bytes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

from bench.plots import save_png
from bench.records import is_eval_key
from bench.report import SERIES_PNG, TRACKING_PNG
from bench.report.sections import finite, variant_key

# Series keys plotted first (issue 12's tracking metrics), then the rest alphabetically.
SERIES_PRIORITY = ("refusal_harmful", "over_refusal_benign", "over_refusal_borderline", "pref_acc_implicit", "pref_acc_raw",
                   "logp_margin_per_token", "logp_margin_sum", "loss")
SERIES_SKIP = ("step", "epoch", "fraction", "time", "wall_time_s", "learning_rate", "grad_norm", "cost_threshold")
MAX_SERIES_PANELS = 9
# Panels of plot_tracking: (metric, title).
PANELS = (("refusal_harmful", "refusal rate, harmful prompts"),
          ("over_refusal_benign", "over-refusal, benign prompts"),
          ("over_refusal_borderline", "over-refusal, borderline-safe prompts"),
          ("pref_acc_implicit", "preference accuracy (implicit; dashed: raw)"),
          ("logp_margin_per_token", "log-prob margin per token (chosen - rejected)"))
TRACKING_TABLE = ("refusal_harmful", "over_refusal_benign", "over_refusal_borderline", "pref_acc_implicit", "pref_acc_raw",
                  "logp_margin_per_token", "chosen_shift", "rejected_shift")


# =========================================================================== training logs


def _series_points(rec: dict) -> list[dict]:
    s = (rec.get("extra") or {}).get("series")
    return [p for p in s if isinstance(p, dict)] if isinstance(s, list) else []


def _num(v: Any) -> float | None:
    if isinstance(v, dict):
        v = v.get("value")
    return float(v) if finite(v) else None


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
                          if not is_eval_key(k) and _series_points(rec)),
                         key=lambda t: variant_key(t[0], t[1]["stage"]))
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
            pts = [(x, y) for x, y in pts if finite(x) and y is not None]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", ms=2.5, lw=1.2, label=name)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    return save_png(fig, path, legend_room=0.06)


def series_section(records: dict[str, dict], assets: Path, profile: str, write_plots: bool) -> list[str]:
    names = sorted((rec["variant"] for k, rec in records.items() if not is_eval_key(k) and _series_points(rec)),
                   key=lambda n: variant_key(n, records.get(f"{n}.json", {}).get("stage", "")))
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


# =========================================================================== tuning dynamics


def tracked_records(records: Iterable[dict] | dict) -> list[dict]:
    """The records (a list, or the leaderboard's ``{file: record}``) that carry a tracking series."""
    recs = records.values() if isinstance(records, dict) else records
    return [r for r in recs if ((r.get("extra") or {}).get("tracking") or {}).get("series")]


def _value(m: dict | None) -> float | None:
    v = (m or {}).get("value")
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def plot_tracking(records: Iterable[dict] | dict, path: Path) -> Path | None:
    """PNG of the tracking series: one line per variant, four panels (harmful refusal, benign
    over-refusal, preference accuracy (implicit solid, raw dashed), per-token log-prob margin)
    against the fraction of training, with 95% intervals as bands. None when no record has a series."""
    recs = tracked_records(records)
    if not recs:
        return None

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, rec in enumerate(sorted(recs, key=lambda r: (r.get("stage", ""), r["variant"]))):
        color = colors[i % len(colors)]
        series = rec["extra"]["tracking"]["series"]
        for ax, (key, title) in zip(axes.flat, PANELS):
            keys = [(key, "-", rec["variant"])]
            if key == "pref_acc_implicit":
                keys.append(("pref_acc_raw", "--", None))
            for k, style, label in keys:
                pts = [(e["fraction"], e["metrics"].get(k)) for e in series]
                pts = [(x, m) for x, m in pts if _value(m) is not None]
                if not pts:
                    continue
                xs = [x for x, _ in pts]
                ax.plot(xs, [_value(m) for _, m in pts], style, marker="o", ms=3, lw=1.3, color=color, label=label)
                lo = [(m.get("ci_low"), m.get("ci_high")) for _, m in pts]
                if style == "-" and all(isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isfinite(a)
                       and math.isfinite(b) for a, b in lo):
                    ax.fill_between(xs, [a for a, _ in lo], [b for _, b in lo], color=color, alpha=0.12, lw=0)
            ax.set_title(title, fontsize=9)
    for ax, (key, _) in zip(axes.flat, PANELS):
        ax.set_xlabel("fraction of training")
        ax.set_xlim(-0.03, 1.03)
        if key != "logp_margin_per_token":
            ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    return save_png(fig, path, legend_room=0.1)


def tracking_table(records: Iterable[dict] | dict, metrics: tuple[str, ...] = TRACKING_TABLE) -> list[str]:
    """Markdown table lines (variant, step, fraction, metrics), one row per kept checkpoint."""
    recs = sorted(tracked_records(records), key=lambda r: (r.get("stage", ""), r["variant"]))
    if not recs:
        return []
    lines = ["| variant | step | fraction | " + " | ".join(metrics) + " |",
             "|---|---:|---:|" + "---:|" * len(metrics)]
    for rec in recs:
        for e in rec["extra"]["tracking"]["series"]:
            cells = []
            for k in metrics:
                v = _value(e["metrics"].get(k))
                cells.append("–" if v is None else f"{v:.3f}")
            lines.append(f"| {rec['variant']} | {e['step']} | {e['fraction']:.2f} | " + " | ".join(cells) + " |")
    return lines


def tracking_section(records: dict[str, dict], assets: Path, profile: str, write_plots: bool) -> list[str]:
    """Issue 12's validation pass at kept checkpoints (``extra.tracking.series``): plot and table."""
    train = {k: r for k, r in sorted(records.items()) if not is_eval_key(k)}
    if not tracked_records(train):
        return []
    path = assets / TRACKING_PNG
    if write_plots:
        plot_tracking(train, path)
    lines = ["## Tuning dynamics", "",
             "A small validation pass at each kept checkpoint of a run (bench/train/tracking.py): refusal rates, "
             "preference accuracy and log-prob margins as training progresses, one line per variant.", ""]
    if path.exists():
        lines += [f"![tuning dynamics]({profile}/{TRACKING_PNG})", ""]
    return lines + tracking_table(train) + [""]
