"""The layerwise audit's table as data: its metrics, its markdown and its plot (no torch).

``bench.steer.audit`` measures the table during ``make steer`` and stores it in the ``steer-audit``
record (``extra["audit"]``); the leaderboard renders it from the record with :func:`audit_markdown`
and the steer stage draws :func:`plot_audit`. Kept apart from the measurement so that rendering a
leaderboard never loads torch or a model.
"""

from __future__ import annotations

import math
from pathlib import Path

METRICS = ("norm", "separability", "cos_base")
METRIC_TITLES = {
    "norm": "norm of the difference of means",
    "separability": "held-out separability (Cohen's d along the direction)",
    "cos_base": "cosine to the base model's direction",
}


def _fmt(v: float | None, digits: int) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _span(layers: list[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3, 7"``."""
    out, start = [], None
    for i, x in enumerate(layers):
        if start is None:
            start = x
        if i + 1 == len(layers) or layers[i + 1] != x + 1:
            out.append(str(start) if start == x else f"{start}-{x}")
            start = None
    return ", ".join(out)


def audit_markdown(table: dict) -> str:
    """Markdown: one table per metric, rows = layers, columns = checkpoints."""
    names = [c["name"] for c in table["checkpoints"]]
    lines = [f"Refusal-direction audit at position {table['position']} (-1 = last prompt token); groups by "
             f"{table.get('grouping', 'label')}; layer = {table.get('layer_note', 'hidden-state index')}; "
             f"separability = {table.get('separability', '')}.", ""]
    unchanged = [set(u) for u in table.get("unchanged_layers") or [[] for _ in names]]
    if any(unchanged):
        lines += ["`=`: the checkpoint's difference of means at that layer is bit-identical to the base's. Those "
                  "hidden states are outputs of blocks the stage froze (`trainable: top_layers`), so the audit cannot "
                  "see change there by construction; it is not a measured absence of change. "
                  + "; ".join(f"`{n}`: layers {_span(sorted(u))}" for n, u in zip(names, unchanged) if u) + ".", ""]
    digits = {"norm": 2, "separability": 2, "cos_base": 3}
    for m in METRICS:
        rows = table["metrics"][m]
        lines += [f"**{METRIC_TITLES[m]}**", "", "| layer | " + " | ".join(names) + " |",
                  "|---:|" + "---:|" * len(names)]
        for layer, row in zip(table["layers"], rows):
            lines.append(f"| {layer} | " + " | ".join("=" if layer in unchanged[j] else _fmt(v, digits[m])
                                                     for j, v in enumerate(row)) + " |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def plot_audit(table: dict, path: str | Path) -> Path:
    """Three panels (norm, separability, cosine to base) against layer, one line per checkpoint."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = table["layers"]
    names = [c["name"] for c in table["checkpoints"]]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, m in zip(axes, METRICS):
        rows = table["metrics"][m]
        for j, name in enumerate(names):
            ys = [math.nan if r[j] is None else r[j] for r in rows]
            ax.plot(layers, ys, marker="o", ms=3, label=name, lw=2 if name == "base" else 1.2)
        ax.set_title(METRIC_TITLES[m], fontsize=10)
        ax.set_xlabel("layer (hidden-state index)")
        ax.grid(alpha=0.3)
    axes[2].set_ylim(-1.05, 1.05)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(f"Refusal direction across checkpoints (position {table['position']})", fontsize=11)
    from bench.plots import save_png

    return save_png(fig, path, dpi=110, legend=False)
