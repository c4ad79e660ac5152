"""Figure output shared by the leaderboard, the tuning-dynamics plot and the steering audit:
one legend below the panels and byte-stable PNGs (no timestamps), written atomically, so rendering
twice gives the same file."""

from __future__ import annotations

import io
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
