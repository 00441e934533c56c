"""What overlaps what in a rendered matplotlib figure, in display coordinates (pixels), from the renderer's extents.

Used by the plot tests (tests/test_inspect.py, tests/test_results_plots.py): a picture passes when no text
overlaps another text or an image, every text lies inside the figure, and no legend or label covers a data point.
"""
import numpy as np
from matplotlib.collections import PathCollection
from matplotlib.image import AxesImage
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.text import Annotation, Text

#: pixels two boxes may share at their borders (antialiasing, rounding) without counting as overlapping
SLACK = 1.0


def render(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _shrunk(box):
    return box.from_extents(box.x0 + SLACK, box.y0 + SLACK, box.x1 - SLACK, box.y1 - SLACK)


def _drawn_texts(fig):
    """``[(text, axes, axis name)]`` of the Text artists a figure draws: its own texts (suptitle), and per visible
    axes its titles, axis labels and tick labels (when its axes are on; axis name "x"/"y", for those whose tick may
    lie beyond the limits), annotations and legend texts."""
    out = [(t, None, None) for t in fig.texts]
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        out += [(t, ax, None) for t in (ax.title, ax._left_title, ax._right_title, *ax.texts)]
        if ax.axison:
            for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
                if axis.get_visible():
                    out += [(axis.label, ax, None), (axis.get_offset_text(), ax, None)]
                    out += [(t, ax, name) for t in axis.get_ticklabels()]
        legend = ax.get_legend()
        if legend is not None:
            out += [(t, ax, None) for t in (legend.get_title(), *legend.get_texts())]
    out += [(t, None, None) for leg in fig.legends for t in (leg.get_title(), *leg.get_texts())]
    return list({id(t): (t, ax, name) for t, ax, name in out}.values())  # once each (the suptitle is in fig.texts)


def texts(fig):
    """``[(text, box)]`` of every visible, non-empty text (titles, labels, ticks, annotations, legends, colour bars)."""
    renderer = render(fig)
    out = []
    for t, ax, axis in _drawn_texts(fig):
        if t.get_visible() and t.get_text().strip():
            if isinstance(t, Annotation):
                t.update_positions(renderer)
            box = Text.get_window_extent(t, renderer)  # the words only (an annotation's extent adds its line)
            if box.width > 0 and box.height > 0 and not _beyond_limits(ax, axis, box, renderer):
                out.append((t, box))
    return out


def _beyond_limits(ax, axis, box, renderer):
    """A tick label of a tick outside the axis' view limits (matplotlib keeps it, but does not draw it)."""
    if axis is None:
        return False
    frame = ax.get_window_extent(renderer)
    if axis == "x":
        return not frame.x0 - SLACK <= (box.x0 + box.x1) / 2 <= frame.x1 + SLACK
    return not frame.y0 - SLACK <= (box.y0 + box.y1) / 2 <= frame.y1 + SLACK


def text_overlaps(fig):
    """Pairs of texts whose boxes overlap (as ``(text a, text b)`` strings)."""
    boxes = texts(fig)
    out = []
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1:]:
            if _shrunk(box_a).overlaps(_shrunk(box_b)):
                out.append((a.get_text(), b.get_text()))
    return out


def texts_outside(fig):
    """Texts that stick out of the figure (cut off in the PNG)."""
    frame = fig.bbox
    return [t.get_text() for t, box in texts(fig)
            if box.x0 < frame.x0 - SLACK or box.y0 < frame.y0 - SLACK or box.x1 > frame.x1 + SLACK
            or box.y1 > frame.y1 + SLACK]


def texts_on_images(fig):
    """``(text, image's axes title)`` for texts drawn over an image (imshow) of any axes."""
    renderer = render(fig)
    images = [(im.axes, im.get_window_extent(renderer)) for ax in fig.axes for im in ax.get_images()
              if isinstance(im, AxesImage)]
    return [(t.get_text(), ax.get_title()) for t, box in texts(fig) for ax, im in images
            if _shrunk(box).overlaps(_shrunk(im))]


def data_points(ax):
    """Display coordinates ``(n, 2)`` of every marker and line vertex drawn in ``ax``."""
    render(ax.figure)
    points = []
    for coll in ax.collections:
        if isinstance(coll, PathCollection) and len(coll.get_offsets()):
            points.append(coll.get_offset_transform().transform(np.asarray(coll.get_offsets(), dtype=float)))
    for line in ax.lines:
        if isinstance(line, Line2D) and len(line.get_xydata()):
            points.append(line.get_transform().transform(np.asarray(line.get_xydata(), dtype=float)))
    return np.concatenate(points) if points else np.zeros((0, 2))


def covered_points(fig, ax):
    """``(what, point)`` for data points of ``ax`` that a legend or a text box covers."""
    renderer = render(fig)
    points = data_points(ax)
    covers = [("legend", leg.get_window_extent(renderer)) for leg in fig.findobj(Legend)]
    covers += [(t.get_text(), box) for t, box in texts(fig) if not _inside_legend(fig, box, renderer)]
    out = []
    for what, box in covers:
        inner = _shrunk(box)
        for x, y in points:
            if inner.x0 < x < inner.x1 and inner.y0 < y < inner.y1:
                out.append((what, (round(float(x)), round(float(y)))))
    return out


def _inside_legend(fig, box, renderer):
    """A text that is part of a legend (checked as the legend as a whole)."""
    for leg in fig.findobj(Legend):
        lb = leg.get_window_extent(renderer)
        if lb.x0 - SLACK <= box.x0 and box.x1 <= lb.x1 + SLACK and lb.y0 - SLACK <= box.y0 and box.y1 <= lb.y1 + SLACK:
            return True
    return False
