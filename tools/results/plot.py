"""Accuracy against training time per method (the MPL paper's Figure 2), as a PNG of an exact pixel size."""
from __future__ import annotations

from pathlib import Path

from .tables import Report

def time_unit(max_seconds: float) -> tuple[str, float]:
    """Seconds below 2 minutes, minutes below 2 hours, hours above."""
    if max_seconds < 120:
        return "s", 1.0
    if max_seconds < 2 * 3600:
        return "min", 60.0
    return "h", 3600.0


def plot(report: Report, path: str | Path, width: int = 800, height: int = 600, dpi: int = 100,
         title: str | None = None) -> Path:
    """Write ``report.points`` as a scatter plot (one line per method when it has several points, e.g. shots).

    Filled markers: every expected run found; hollow markers: some runs missing (partial averages). Uses the Agg
    canvas directly (no pyplot, no global backend switch).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Agg truncates width*dpi to an int: pad by a thousandth of a pixel so float error cannot lose a pixel.
    fig = Figure(figsize=((width + 1e-3) / dpi, (height + 1e-3) / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    points = report.points
    unit, scale = time_unit(max((p["time_s"] for p in points), default=0.0))
    groups: dict[str, list[dict]] = {}
    for p in points:
        groups.setdefault(p["group"], []).append(p)
    for i, (group, pts) in enumerate(groups.items()):
        pts = sorted(pts, key=lambda p: p["time_s"])
        color = f"C{i % 10}"
        xs, ys = [p["time_s"] / scale for p in pts], [p["value"] for p in pts]
        if len(pts) > 1:
            ax.plot(xs, ys, "-", color=color, alpha=0.6)
        for p, x, y in zip(pts, xs, ys):
            ax.plot([x], [y], "o", markersize=9, color=color, markerfacecolor="none" if p["partial"] else color,
                    label=group if p is pts[0] else None)
            ax.annotate(p.get("annotation", group) + (" (partial)" if p["partial"] else ""), (x, y),
                        textcoords="offset points", xytext=(6, 6), fontsize=9)
    if not points:
        ax.text(0.5, 0.5, "no method has both accuracy and training time", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel(f"Average training time per run ({unit})")
    ax.set_ylabel(report.value_label)
    ax.set_title(title or {"base2new": "Base-to-new generalisation", "crossdataset": "Cross-dataset evaluation",
                           "dg": "Domain generalisation", "fewshot": "Few-shot learning"}[report.protocol])
    ax.grid(True, alpha=0.3)
    ax.margins(0.15)
    if groups:
        ax.legend(loc="best", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi, format="png")
    return path
