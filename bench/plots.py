"""Figure output shared by the leaderboard (its safety trade-off: :func:`plot_pareto`), the
tuning-dynamics plot and the steering audit: one legend below the panels and byte-stable PNGs (no
timestamps), written atomically, so rendering twice gives the same file."""

from __future__ import annotations

import io
import math
from pathlib import Path

from bench.io import atomic_write_bytes


def save_png(fig, path: Path, dpi: int = 90, legend_room: float = 0.06, legend: bool = True) -> Path:
    """Legend from the first panel below the figure (``legend``), then a deterministic PNG at ``path``."""
    import matplotlib.pyplot as plt

    axes = fig.get_axes()
    handles, labels = axes[0].get_legend_handles_labels() if axes and legend else ([], [])
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, legend_room if handles else 0, 1, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _label_positions(items: list[tuple[str, float, float]], height: float = 0.036,
                     char_w: float = 0.0125) -> list[float]:
    """Label heights (data units) for points ``(label, x, y)`` on [0, 1] axes, nudged down until no two
    labels' boxes (to the right of their points) overlap; deterministic (in the given order)."""
    placed: list[tuple[float, float, float]] = []  # (x0, x1, y) of labels already placed
    out = []
    for label, x, y in items:
        x0, x1, ly = x + 0.012, x + 0.012 + char_w * len(label), y + 0.012
        while any(abs(ly - py) < height and x0 < px1 and px0 < x1 for px0, px1, py in placed):
            ly -= height
        placed.append((x0, x1, ly))
        out.append(ly)
    return out


def plot_pareto(points: list[dict], panels: list[dict], path: Path) -> Path | None:
    """A trade-off figure on [0, 1] axes: one panel per ``panels`` entry (``{"x", "y"}`` metric names,
    ``"xlabel"``, ``"ylabel"``, ``"title"``, ``"front"``: the labels on that panel's Pareto front), each
    point of ``points`` (``{"label", "metrics": {name: {value, ci_low, ci_high}}}``) with its 95%
    interval as whiskers on both axes and its label (nudged apart, with a leader line when moved);
    the front's points filled and joined by a dashed line in x order, the others hollow. Points
    without both values are left out of a panel. None (no file) when no panel has a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def coords(p: dict, key: str) -> tuple[float, float, float] | None:
        m = (p.get("metrics") or {}).get(key) or {}
        v = m.get("value")
        if not _finite(v):
            return None
        lo, hi = m.get("ci_low"), m.get("ci_high")
        return (float(v), max(0.0, v - lo) if _finite(lo) else 0.0, max(0.0, hi - v) if _finite(hi) else 0.0)

    if not any(coords(p, pn["x"]) and coords(p, pn["y"]) for pn in panels for p in points):
        return None
    cmap = plt.get_cmap("tab10" if len(points) <= 10 else "tab20")
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5.2), squeeze=False)
    for ax, pn in zip(axes.flat, panels):
        front, shown = [], []
        for i, p in enumerate(points):
            x, y = coords(p, pn["x"]), coords(p, pn["y"])
            if x is None or y is None:
                continue
            on = p["label"] in pn.get("front", ())
            color = cmap(i % cmap.N)
            ax.errorbar([x[0]], [y[0]], xerr=[[x[1]], [x[2]]], yerr=[[y[1]], [y[2]]], fmt="o", ms=6, color=color,
                        mfc=color if on else "white", ecolor=color, elinewidth=0.9, capsize=2.5, alpha=0.9)
            shown.append((p["label"], x[0], y[0]))
            if on:
                front.append((x[0], y[0]))
        order = sorted(range(len(shown)), key=lambda k: (-shown[k][2], shown[k][1], shown[k][0]))
        heights = _label_positions([shown[k] for k in order])
        for k, ly in zip(order, heights):
            label, x, y = shown[k]
            moved = abs(ly - (y + 0.012)) > 1e-9
            ax.annotate(label, (x, y), xytext=(x + 0.012, ly), textcoords="data", fontsize=7, va="bottom",
                        arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.5"} if moved else None)
        if len(front) > 1:
            front.sort()
            ax.plot([a for a, _ in front], [b for _, b in front], "--", color="0.4", lw=1.0, zorder=0)
        ax.set_xlabel(pn["xlabel"])
        ax.set_ylabel(pn["ylabel"])
        ax.set_title(pn["title"], fontsize=10)
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.text(0.98, 0.02, "better: up and left", transform=ax.transAxes, fontsize=7.5, ha="right", color="0.35")
        ax.grid(alpha=0.3)
    return save_png(fig, path, legend=False)
