"""Evaluators: accumulate predictions batch by batch, then compute and print the metrics."""
import os.path as osp
from collections import OrderedDict, defaultdict

import numpy as np
import torch

from .build import EVALUATOR_REGISTRY

__all__ = ["EvaluatorBase", "Classification", "macro_f1_score", "normalized_confusion_matrix"]


def macro_f1_score(y_true, y_pred) -> float:
    """Macro F1 over the labels present in ``y_true`` (what Dassl gets from scikit-learn's ``f1_score(...,
    average="macro", labels=np.unique(y_true))``; a label never predicted scores 0).

    Written with NumPy so that a run does not import scikit-learn and SciPy (about a fifth of a training process's
    start-up) just for this line.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = np.unique(y_true)
    tp = np.array([np.sum((y_true == k) & (y_pred == k)) for k in labels], dtype=np.float64)
    fp = np.array([np.sum(y_pred == k) for k in labels], dtype=np.float64) - tp
    fn = np.array([np.sum(y_true == k) for k in labels], dtype=np.float64) - tp
    denom = 2 * tp + fp + fn  # > 0: every label occurs in y_true
    return float(np.mean(2 * tp / denom)) if len(labels) else 0.0


def normalized_confusion_matrix(y_true, y_pred) -> np.ndarray:
    """Rows: true labels, columns: predictions, over the sorted labels of both; each row divided by its total
    (scikit-learn's ``confusion_matrix(..., normalize="true")``)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    labels = np.unique(np.concatenate([y_true, y_pred]))
    index = {k: i for i, k in enumerate(labels.tolist())}
    cmat = np.zeros((len(labels), len(labels)), dtype=np.float64)
    np.add.at(cmat, ([index[k] for k in y_true.tolist()], [index[k] for k in y_pred.tolist()]), 1)
    rows = cmat.sum(axis=1, keepdims=True)
    return np.divide(cmat, rows, out=np.zeros_like(cmat), where=rows > 0)


class EvaluatorBase:
    """Interface: ``reset()``, ``process(model_output, ground_truth)`` per batch, then ``evaluate()``."""

    def __init__(self, cfg):
        self.cfg = cfg

    def reset(self):
        raise NotImplementedError

    def process(self, mo, gt):
        raise NotImplementedError

    def evaluate(self):
        raise NotImplementedError


def _is_main_process():
    from dassl.engine import distributed

    return distributed.is_main_process()


@EVALUATOR_REGISTRY.register()
class Classification(EvaluatorBase):
    """Accuracy, error rate and macro F1 of a classifier (plus per-class accuracy and confusion matrix on request).

    ``evaluate()`` prints::

        => result
        * total: 3,669
        * correct: 3,270
        * accuracy: 89.1%
        * error: 10.9%
        * macro_f1: 88.9%

    and returns an ``OrderedDict`` whose first key is ``accuracy`` (then ``error_rate``, ``macro_f1``).
    """

    def __init__(self, cfg, lab2cname=None, **kwargs):
        super().__init__(cfg)
        self._lab2cname = lab2cname
        self._correct = 0
        self._total = 0
        self._per_class_res = None
        self._y_true = []
        self._y_pred = []
        if cfg.TEST.PER_CLASS_RESULT:
            assert lab2cname is not None
            self._per_class_res = defaultdict(list)

    def reset(self):
        self._correct = 0
        self._total = 0
        self._y_true = []
        self._y_pred = []
        if self._per_class_res is not None:
            self._per_class_res = defaultdict(list)

    def process(self, mo, gt):
        """Add a batch: ``mo`` logits ``(batch, num_classes)``, ``gt`` labels ``(batch,)``."""
        pred = mo.max(1)[1]
        matches = pred.eq(gt).float()
        self._correct += int(matches.sum().item())
        self._total += gt.shape[0]
        self._y_true.extend(gt.data.cpu().numpy().tolist())
        self._y_pred.extend(pred.data.cpu().numpy().tolist())
        if self._per_class_res is not None:
            for i, label in enumerate(gt):
                label = label.item()
                self._per_class_res[label].append(int(matches[i].item()))

    def _gather(self):
        """In a multi-process run, merge every rank's predictions (in rank order) into this evaluator.

        Ranks evaluate disjoint contiguous parts of the split without padding, so the merged lists are the
        single-process ones and nothing is counted twice. Every rank ends with the same numbers.
        """
        from dassl.engine import distributed  # imported here: dassl.engine imports this package

        if not distributed.is_distributed():
            return
        own = (self._correct, self._total, self._y_true, self._y_pred,
               None if self._per_class_res is None else dict(self._per_class_res))
        parts = distributed.all_gather_objects(own)
        self.reset()
        for correct, total, y_true, y_pred, per_class in parts:
            self._correct += correct
            self._total += total
            self._y_true.extend(y_true)
            self._y_pred.extend(y_pred)
            if per_class is not None:
                for label, res in per_class.items():
                    self._per_class_res[label].extend(res)

    def evaluate(self):
        self._gather()
        results = OrderedDict()
        acc = 100.0 * self._correct / self._total
        err = 100.0 - acc
        macro_f1 = 100.0 * macro_f1_score(self._y_true, self._y_pred)
        results["accuracy"] = acc
        results["error_rate"] = err
        results["macro_f1"] = macro_f1

        print(
            "=> result\n"
            f"* total: {self._total:,}\n"
            f"* correct: {self._correct:,}\n"
            f"* accuracy: {acc:.1f}%\n"
            f"* error: {err:.1f}%\n"
            f"* macro_f1: {macro_f1:.1f}%"
        )

        if self._per_class_res is not None:
            labels = sorted(self._per_class_res.keys())
            print("=> per-class result")
            accs = []
            for label in labels:
                classname = self._lab2cname[label]
                res = self._per_class_res[label]
                correct = sum(res)
                total = len(res)
                acc = 100.0 * correct / total
                accs.append(acc)
                print(f"* class: {label} ({classname})\ttotal: {total:,}\tcorrect: {correct:,}\tacc: {acc:.1f}%")
            mean_acc = np.mean(accs)
            print(f"* average: {mean_acc:.1f}%")
            results["perclass_accuracy"] = mean_acc

        if self.cfg.TEST.COMPUTE_CMAT and _is_main_process():
            cmat = normalized_confusion_matrix(self._y_true, self._y_pred)
            save_path = osp.join(self.cfg.OUTPUT_DIR, "cmat.pt")
            torch.save(cmat, save_path)
            print(f"Confusion matrix is saved to {save_path}")

        return results
