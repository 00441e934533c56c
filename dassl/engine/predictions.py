"""``<OUTPUT_DIR>/predictions.csv``: every test image's predicted classes, written beside ``result.json`` when
``TEST.SAVE_PREDICTIONS`` is True (not in Dassl; off by default).

One row per test image, in the test split's order (under torchrun each rank's rows are gathered in rank order,
which is the split's order: the ranks evaluate contiguous parts of it)::

    path,label,prediction,score,prediction_2,score_2,...,prediction_5,score_5

``label`` and the predictions are class names (``lab2cname``), the scores softmax probabilities of the evaluation
logits over the run's classes (6 decimals); a run with fewer than 5 classes has fewer columns. The file is
written atomically at the end of the evaluation of the test split (validation passes write nothing).
"""
import csv
import os.path as osp

import torch

from dassl.utils import atomic_write

from . import distributed

__all__ = ["PREDICTIONS_FILE", "TOP_K", "PredictionRecorder", "recorder_for", "header", "rows_for"]

PREDICTIONS_FILE = "predictions.csv"
#: the most classes a row lists
TOP_K = 5


def header(k):
    """The CSV header for rows with ``k`` predicted classes."""
    cols = ["path", "label", "prediction", "score"]
    for i in range(2, k + 1):
        cols += ["prediction_{}".format(i), "score_{}".format(i)]
    return cols


def rows_for(paths, labels, logits, classnames, k=TOP_K):
    """Rows (lists of strings) for a batch: ``labels`` class indices (or None: an empty label column), ``logits``
    ``(B, C)``; the ``min(k, C)`` most probable classes of each image."""
    probs = torch.softmax(logits.detach().float().cpu(), dim=-1)
    k = min(k, probs.shape[-1])
    scores, indices = probs.topk(k, dim=-1)
    out = []
    for i in range(probs.shape[0]):
        label = "" if labels is None else classnames[int(labels[i])]
        row = [str(paths[i]) if paths is not None else "", label]
        for j in range(k):
            row += [classnames[int(indices[i, j])], "{:.6f}".format(float(scores[i, j]))]
        out.append(row)
    return out


class PredictionRecorder:
    """Collects the rows of one evaluation and writes them (rank 0) into ``<output_dir>/predictions.csv``."""

    def __init__(self, classnames, output_dir, k=TOP_K):
        self.classnames = list(classnames)
        self.output_dir = output_dir
        self.k = min(k, len(self.classnames))
        self.rows = []

    def add(self, batch, logits):
        paths = batch.get("impath") if isinstance(batch, dict) else None
        labels = batch.get("label") if isinstance(batch, dict) else None
        self.rows += rows_for(paths, labels, logits, self.classnames, self.k)

    def write(self):
        """Gather the rows of every rank (in rank order) and write the file on rank 0; returns its path (None on
        the other ranks)."""
        rows = self.rows
        if distributed.is_distributed():
            rows = [row for part in distributed.all_gather_objects(rows) for row in part]
        if not distributed.is_main_process():
            return None
        path = osp.join(self.output_dir, PREDICTIONS_FILE)

        def _dump(f):
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(header(self.k))
            writer.writerows(rows)

        atomic_write(path, _dump)
        return path


def recorder_for(trainer, split):
    """A :class:`PredictionRecorder` for the evaluation of ``split`` when the run saves predictions (the test
    split only), else None."""
    cfg = trainer.cfg
    if split != "test" or not cfg.TEST.get("SAVE_PREDICTIONS", False):
        return None
    lab2cname = getattr(trainer, "lab2cname", None) or {}
    classnames = [lab2cname[i] for i in sorted(lab2cname)]
    return PredictionRecorder(classnames, cfg.OUTPUT_DIR)
