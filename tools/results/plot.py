"""The plots of ``python -m tools.results --plot``, as PNGs of an exact pixel size.

- ``<protocol>_time.png``: average accuracy against average training time, one labelled point per method (the MPL
  paper's Figure 2). Drawn only when more than one method has both numbers: a single dot compares nothing.
- ``fewshot_shots.png`` (few-shot protocol): average accuracy against the number of shots, one line per method,
  with error bars of one population standard deviation over seeds (where every seed of every dataset is there).

:func:`write_plots` draws what the report allows and says why it skipped the others.
"""
from __future__ import annotations

from pathlib import Path

from .published import AVERAGE
from .tables import Report

TITLES = {"base2new": "Base-to-new generalisation", "crossdataset": "Cross-dataset evaluation",
          "dg": "Domain generalisation", "fewshot": "Few-shot learning"}


def time_unit(max_seconds: float) -> tuple[str, float]:
    """Seconds below 2 minutes, minutes below 2 hours, hours above."""
    if max_seconds < 120:
        return "s", 1.0
    if max_seconds < 2 * 3600:
        return "min", 60.0
    return "h", 3600.0


def _figure(width: int, height: int, dpi: int):
    """A Figure on its own Agg canvas (no pyplot, no global backend switch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Agg truncates width*dpi to an int: pad by a thousandth of a pixel so float error cannot lose a pixel.
    fig = Figure(figsize=((width + 1e-3) / dpi, (height + 1e-3) / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path, dpi: int) -> Path:
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=dpi, format="png")
    tmp.replace(path)
    return path


def _groups(points: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for p in points:
        groups.setdefault(p["group"], []).append(p)
    return groups


def plot(report: Report, path: str | Path, width: int = 800, height: int = 600, dpi: int = 100,
         title: str | None = None) -> Path:
    """Write ``report.points`` as accuracy against training time, each point labelled with its method.

    Methods with several points (few-shot: one per shot count) are joined by a line and each point is labelled
    ``METHOD K-shot``. Filled markers: every expected run found; hollow: some runs missing (partial averages).
    """
    fig = _figure(width, height, dpi)
    ax = fig.add_subplot()
    points = report.points
    unit, scale = time_unit(max((p["time_s"] for p in points), default=0.0))
    groups = _groups(points)
    for i, (group, pts) in enumerate(groups.items()):
        pts = sorted(pts, key=lambda p: p["time_s"])
        color = f"C{i % 10}"
        xs, ys = [p["time_s"] / scale for p in pts], [p["value"] for p in pts]
        if len(pts) > 1:
            ax.plot(xs, ys, "-", color=color, alpha=0.6)
        for p, x, y in zip(pts, xs, ys):
            ax.plot([x], [y], "o", markersize=9, color=color, markerfacecolor="none" if p["partial"] else color,
                    label=group if p is pts[0] else None)
            label = group if "annotation" not in p else f"{group} {p['annotation']}-shot"
            ax.annotate(f"{label} ({y:.1f})" + (" partial" if p["partial"] else ""), (x, y),
                        textcoords="offset points", xytext=(6, 6), fontsize=9, color=color)
    if not points:
        ax.text(0.5, 0.5, "no method has both accuracy and training time", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel(f"Average training time per run ({unit})")
    ax.set_ylabel(report.value_label)
    ax.set_title(title or f"{TITLES[report.protocol]}: accuracy against training time")
    ax.grid(True, alpha=0.3)
    ax.margins(0.15)
    if groups:
        ax.legend(loc="best", fontsize=9)
    return _save(fig, path, dpi)


def shot_series(report: Report) -> dict[str, list[tuple[int, float, float | None, bool]]]:
    """Few-shot report -> ``{method label: [(shots, mean, seed std or None, complete), ...]}`` (dataset average)."""
    series: dict[str, list[tuple[int, float, float | None, bool]]] = {}
    for row in report.summary.get("rows", []):
        acc = row["accuracy"]
        if row["dataset"] != AVERAGE or acc["mean"] is None:
            continue
        series.setdefault(row["label"], []).append(
            (int(row["shots"]), acc["mean"], acc["std"], acc["n"] == acc["n_expected"]))
    return {label: sorted(pts) for label, pts in series.items()}


def plot_shots(report: Report, path: str | Path, width: int = 800, height: int = 600, dpi: int = 100,
               title: str | None = None) -> Path:
    """Few-shot: average accuracy against shots (log-2 axis), a line per method, seed std as error bars."""
    if report.protocol != "fewshot":
        raise ValueError(f"the shots plot needs a few-shot report, not {report.protocol!r}")
    series = shot_series(report)
    fig = _figure(width, height, dpi)
    ax = fig.add_subplot()
    shots = sorted({k for pts in series.values() for k, *_ in pts})
    for i, (label, pts) in enumerate(series.items()):
        color = f"C{i % 10}"
        ks, means = [p[0] for p in pts], [p[1] for p in pts]
        errs = [p[2] or 0.0 for p in pts]
        ax.errorbar(ks, means, yerr=errs, fmt="-", color=color, capsize=4, label=label)
        for k, m, _, complete in pts:
            ax.plot([k], [m], "o", markersize=8, color=color, markerfacecolor=color if complete else "none")
        ax.annotate(label, (ks[-1], means[-1]), textcoords="offset points", xytext=(6, 0), fontsize=9,
                    color=color, va="center")
    if not series:
        ax.text(0.5, 0.5, "no method has a few-shot average", ha="center", va="center", transform=ax.transAxes)
    if shots:
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots)
        ax.set_xticklabels([str(k) for k in shots])
    ax.set_xlabel("Shots per class")
    ax.set_ylabel(report.value_label)
    ax.set_title(title or "Few-shot learning: accuracy against shots (error bars: std over seeds; "
                          "hollow: runs missing)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.15, y=0.1)
    if series:
        ax.legend(loc="lower right", fontsize=9)
    return _save(fig, path, dpi)


def write_plots(report: Report, out: str | Path, width: int = 800, height: int = 600
                ) -> tuple[dict[str, Path], list[str]]:
    """Draw the plots the report allows into ``out``: ``({kind: path}, [why a plot was skipped, ...])``."""
    out = Path(out)
    written: dict[str, Path] = {}
    skipped: list[str] = []
    methods = _groups(report.points)
    if len(methods) > 1:
        written["plot"] = plot(report, out / f"{report.protocol}_time.png", width, height)
    else:
        have = f"only {next(iter(methods))}" if methods else "none"
        skipped.append(f"{report.protocol}_time.png: needs more than one method with accuracy and training time "
                       f"({have})")
    if report.protocol == "fewshot":
        if shot_series(report):
            written["plot_shots"] = plot_shots(report, out / "fewshot_shots.png", width, height)
        else:
            skipped.append("fewshot_shots.png: no method has a few-shot average over the datasets")
    return written, skipped
