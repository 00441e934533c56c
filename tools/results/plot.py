"""The plots of ``python -m tools.results --plot``, as PNGs of an exact pixel size.

- ``<protocol>_time.png``: average accuracy against average training time, one labelled point per method (the MPL
  paper's Figure 2). Drawn only when more than one method has both numbers: a single dot compares nothing. Each
  label is put where it overlaps no other label and no point (tried around its point, nearest first; a label
  moved away is joined to its point by a thin line); the labels name the methods, so there is no legend.
- ``fewshot_shots.png`` (few-shot protocol): average accuracy against the number of shots, one line per method,
  with error bars of one population standard deviation over seeds (where every seed of every dataset is there),
  and zero-shot CLIP as a star at 0 shots, as in CoOp's figure. Shots are spaced by their logarithm, with 0 one
  step left of 1. The legend sits outside the axes, so it hides no point.

:func:`write_plots` draws what the report allows and says why it skipped the others.
"""
from __future__ import annotations

import math
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
    """A Figure on its own Agg canvas (no pyplot, no global backend switch), laid out by constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Agg truncates width*dpi to an int: pad by a thousandth of a pixel so float error cannot lose a pixel.
    fig = Figure(figsize=((width + 1e-3) / dpi, (height + 1e-3) / dpi), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path, dpi: int) -> Path:
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


#: where a label may go, in points from its point: right, left, above, below, then the diagonals, nearest first
_DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1))
_DISTANCES = (6, 16, 28, 44, 64)


def place_labels(ax, items: list[tuple[float, float, str, str]], fontsize: float = 9) -> list:
    """Annotate ``(x, y, text, colour)`` items so that no label overlaps another label or any point of ``ax``
    and every label stays inside the axes: the first free spot of :data:`_DISTANCES` x :data:`_DIRECTIONS`,
    else the spot with the fewest overlaps. Call it when the axes limits are final; it freezes the layout."""
    from matplotlib.text import Text

    fig = ax.figure
    fig.draw_without_rendering()  # settle the constrained layout before measuring
    fig.set_layout_engine("none")
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    # every marker of the axes (a label's own included), kept clear by a marker's radius
    points = [xy for line in ax.lines for xy in line.get_transform().transform(line.get_xydata())]
    radius = max((line.get_markersize() for line in ax.lines), default=0) * fig.dpi / 72 / 2
    placed, annotations = [], []
    for x, y, text, color in items:
        best = None
        for distance in _DISTANCES:
            for dx, dy in _DIRECTIONS:
                ann = ax.annotate(text, (x, y), xytext=(dx * distance, dy * distance), textcoords="offset points",
                                  fontsize=fontsize, color=color, ha={1: "left", -1: "right", 0: "center"}[dx],
                                  va={1: "bottom", -1: "top", 0: "center"}[dy],
                                  arrowprops=dict(arrowstyle="-", color=color, lw=0.6, shrinkA=0, shrinkB=4)
                                  if distance > _DISTANCES[0] else None)
                ann.update_positions(renderer)
                box = Text.get_window_extent(ann, renderer).padded(2)  # the words (an annotation adds its line)
                clashes = sum(box.overlaps(b) for b in placed)
                clashes += sum(box.padded(radius).contains(px, py) for px, py in points)
                clashes += 0 if (frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0
                                 and box.y1 <= frame.y1) else 1000  # never outside while any spot is inside
                if best is None or clashes < best[0]:
                    if best is not None:
                        best[1].remove()
                    best = (clashes, ann, box)
                else:
                    ann.remove()
                if clashes == 0:
                    break
            if best[0] == 0:
                break
        placed.append(best[2])
        annotations.append(best[1])
    return annotations


def plot(report: Report, path: str | Path, width: int = 800, height: int = 600, dpi: int = 100,
         title: str | None = None) -> Path:
    """Write ``report.points`` as accuracy against training time.

    One point per method: each labelled ``METHOD (accuracy)``, no legend. Several points per method (few-shot: one
    per shot count): a line per method named in a legend outside the axes, each point labelled with its shots
    (a full label on 25 points leaves no free place). Filled markers: every expected run found; hollow: some runs
    missing (partial averages).
    """
    fig = _figure(width, height, dpi)
    ax = fig.add_subplot()
    points = report.points
    unit, scale = time_unit(max((p["time_s"] for p in points), default=0.0))
    groups = _groups(points)
    lines = any(len(pts) > 1 for pts in groups.values())
    labels = []
    for i, (group, pts) in enumerate(groups.items()):
        pts = sorted(pts, key=lambda p: p["time_s"])
        color = f"C{i % 10}"
        xs, ys = [p["time_s"] / scale for p in pts], [p["value"] for p in pts]
        ax.plot(xs, ys, "-" if len(pts) > 1 else "", color=color, alpha=0.6, label=group if lines else None)
        for p, x, y in zip(pts, xs, ys):
            ax.plot([x], [y], "o", markersize=8, color=color, markerfacecolor="none" if p["partial"] else color)
            text = f"{p['annotation']}" if lines and "annotation" in p else f"{group} ({y:.1f})"
            labels.append((x, y, text + (" partial" if p["partial"] and not lines else ""), color))
    if not points:
        ax.text(0.5, 0.5, "no method has both accuracy and training time", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel(f"Average training time per run ({unit})")
    ax.set_ylabel(report.value_label)
    what = "; labels: shots per class" if lines else ""
    ax.set_title(title or f"{TITLES[report.protocol]}: accuracy against training time\n(hollow: runs missing{what})",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.margins(0.15)
    if lines:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9, borderaxespad=0)
    place_labels(ax, labels, fontsize=8 if lines else 9)
    return _save(fig, path, dpi)


def shot_series(report: Report) -> dict[str, list[tuple[int, float, float | None, bool]]]:
    """Few-shot report -> ``{method label: [(shots, mean, seed std or None, complete), ...]}`` (dataset average);
    a zero-shot reference has the one point ``shots == 0``."""
    series: dict[str, list[tuple[int, float, float | None, bool]]] = {}
    for row in report.summary.get("rows", []):
        acc = row["accuracy"]
        if row["dataset"] != AVERAGE or acc["mean"] is None:
            continue
        series.setdefault(row["label"], []).append(
            (int(row["shots"]), acc["mean"], acc["std"], acc["n"] == acc["n_expected"]))
    return {label: sorted(pts) for label, pts in series.items()}


def shot_position(k: int) -> float:
    """Where ``k`` shots sit on the x axis: ``log2(k) + 1`` (1, 2, 4, 8, 16 evenly spaced), 0 shots at 0."""
    return 0.0 if k == 0 else math.log2(k) + 1


def plot_shots(report: Report, path: str | Path, width: int = 800, height: int = 600, dpi: int = 100,
               title: str | None = None) -> Path:
    """Few-shot: average accuracy against shots, a line per method, seed std as error bars, zero-shot as a star."""
    if report.protocol != "fewshot":
        raise ValueError(f"the shots plot needs a few-shot report, not {report.protocol!r}")
    series = shot_series(report)
    fig = _figure(width, height, dpi)
    ax = fig.add_subplot()
    shots = sorted({k for pts in series.values() for k, *_ in pts})
    for i, (label, pts) in enumerate(series.items()):
        color = f"C{i % 10}"
        xs, means = [shot_position(p[0]) for p in pts], [p[1] for p in pts]
        errs = [p[2] or 0.0 for p in pts]
        if [p[0] for p in pts] == [0]:  # the zero-shot reference
            ax.errorbar(xs, means, yerr=errs, fmt="*", markersize=14, color=color, capsize=4,
                        markerfacecolor=color if pts[0][3] else "none", label=f"{label} (0 shots)")
            continue
        ax.errorbar(xs, means, yerr=errs, fmt="-", color=color, capsize=4, label=label)
        for x, (_, m, _, complete) in zip(xs, pts):
            ax.plot([x], [m], "o", markersize=8, color=color, markerfacecolor=color if complete else "none")
    if not series:
        ax.text(0.5, 0.5, "no method has a few-shot average", ha="center", va="center", transform=ax.transAxes)
    if shots:
        ax.set_xticks([shot_position(k) for k in shots])
        ax.set_xticklabels([str(k) for k in shots])
    ax.set_xlabel("Shots per class")
    ax.set_ylabel(report.value_label)
    ax.set_title(title or "Few-shot learning: accuracy against shots\n(error bars: std over seeds; hollow: runs "
                          "missing)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.08, y=0.1)
    if series:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9, borderaxespad=0)
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
