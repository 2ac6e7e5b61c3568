"""Metrics as the paper reports them: mean class recall (Caltech) and per-class AP / mAP (VOC).

Two average precisions, named for what they compute:

- ``ap_voc07_11pt``: PASCAL VOC2007's 11-point interpolated AP, the mean over recall thresholds
  t = 0, 0.1, ..., 1 of the highest precision at recall >= t (0 when never reached). The paper's
  VOC-2007 numbers use this.
- ``ap_area``: the area under the precision-recall curve after making precision monotone
  (non-increasing in recall), the "all points" AP of VOC2010 onwards.

With multi-label targets, rows may be ignored per class (:func:`multilabel_metrics`): VOC's
"difficult" images, left out of that class's AP only.
"""

from __future__ import annotations

import numpy as np

from .errors import VggfeatError


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of examples whose predicted class is the true one."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        raise VggfeatError("no test examples to score")
    return float(np.mean(y_true == y_pred))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """[n_classes, n_classes] counts: row = true class, column = predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def one_hot(indices: np.ndarray, n_classes: int) -> np.ndarray:
    """[N, n_classes] bool indicators of class ``indices`` [N]."""
    return np.asarray(indices)[:, None] == np.arange(n_classes)[None, :]


def class_recalls(confusion: np.ndarray) -> np.ndarray:
    """Recall of each class (NaN for a class with no test example)."""
    return _share_of(np.diag(confusion), confusion.sum(axis=1))


def class_precisions(confusion: np.ndarray) -> np.ndarray:
    """Precision of each class (NaN for a class never predicted)."""
    return _share_of(np.diag(confusion), confusion.sum(axis=0))


def mean_class_recall(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> float:
    """Mean over the classes present in ``y_true`` of their recall: the paper's Caltech metric,
    insensitive to how many test images each class has."""
    return _mean_recall(class_recalls(confusion_matrix(y_true, y_pred, n_classes)))


def precision_recall(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each of the examples ranked by decreasing score.

    Ties keep the input order (stable sort), as VOC's evaluation code does.
    """
    positive = np.asarray(positive, dtype=bool)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = np.cumsum(positive[order])
    ranks = np.arange(1, len(order) + 1)
    total = positive.sum()
    return hits / ranks, hits / max(total, 1)


# The recalls of the 11 points as the VOC devkit's MATLAB takes them (0:0.1:1, which counts from
# both ends: 1 - 0.4 for 0.6): np.linspace's 0.6000000000000001 and 0.7000000000000001 would miss
# a recall of exactly 0.6 or 0.7 (3 of 5 positives found), as the devkit does not.
VOC07_RECALLS = np.concatenate([np.arange(6) * 0.1, 1 - np.arange(4, -1, -1) * 0.1])


def ap_voc07_11pt(scores: np.ndarray, positive: np.ndarray) -> float:
    """PASCAL VOC2007 11-point interpolated average precision (NaN without positives)."""
    return _voc07_11pt(*precision_recall(scores, positive)) if np.any(positive) else float("nan")


def ap_area(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the precision-recall curve with monotone precision (VOC2010+), NaN without positives."""
    return _area(*precision_recall(scores, positive)) if np.any(positive) else float("nan")


def _voc07_11pt(precision: np.ndarray, recall: np.ndarray) -> float:
    # The best precision at each recall threshold or beyond: the suffix maximum from the first
    # example that reaches it (recall never falls); 0 where none does.
    best = np.maximum.accumulate(precision[::-1])[::-1]
    reached = np.searchsorted(recall, VOC07_RECALLS, side="left")
    return float(np.mean([best[i] if i < len(best) else 0.0 for i in reached]))


def _area(precision: np.ndarray, recall: np.ndarray) -> float:
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at this recall or beyond
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def single_label_metrics(y_true: np.ndarray, scores: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, mean class recall, confusion matrix and per-class AP of one-vs-rest ``scores`` [N, C]."""
    y_pred = np.argmax(scores, axis=1)
    confusion = confusion_matrix(y_true, y_pred, len(classes))
    recalls = class_recalls(confusion)
    per_class = _per_class_ap(scores, one_hot(y_true, len(classes)), classes)
    for row, recall, precision in zip(per_class, recalls, class_precisions(confusion)):
        row.update(recall=_number(recall), precision=_number(precision))
    return {
        "task": "single-label",
        "examples": len(y_true),
        "accuracy": accuracy(y_true, y_pred),
        "mean_class_recall": _mean_recall(recalls),
        **_means(per_class),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "classes": list(classes),
    }


def multilabel_metrics(Y_true: np.ndarray, scores: np.ndarray, classes: list[str], ignore: np.ndarray | None = None) -> dict:
    """Per-class AP (both kinds) and their means over classes with a positive test example.
    ``ignore`` [N, K] bool leaves row i out of class k's AP where set, as VOC's evaluation leaves
    out an image that is "difficult" for the class; each class then also says how many it left out."""
    per_class = _per_class_ap(scores, np.asarray(Y_true, dtype=bool), classes, ignore)
    return {"task": "multi-label", "examples": len(Y_true), **_means(per_class), "per_class": per_class,
            "classes": list(classes)}


def _per_class_ap(scores: np.ndarray, positive: np.ndarray, classes: list[str], ignore: np.ndarray | None = None
                  ) -> list[dict]:
    rows = []
    for k, name in enumerate(classes):
        kept = slice(None) if ignore is None else ~np.asarray(ignore[:, k], dtype=bool)
        support = int(positive[kept, k].sum())
        # One ranking for both APs: a sort of every row per class, the evaluation's cost.
        curve = precision_recall(scores[kept, k], positive[kept, k]) if support else None
        row = {
            "class": name,
            "support": support,
            "ap_voc07_11pt": _number(_voc07_11pt(*curve) if curve else float("nan")),
            "ap_area": _number(_area(*curve) if curve else float("nan")),
        }
        if ignore is not None:
            row["ignored"] = int(np.count_nonzero(ignore[:, k]))
        rows.append(row)
    return rows


def _means(per_class: list[dict]) -> dict:
    def mean(key: str) -> float | None:
        values = [row[key] for row in per_class if row[key] is not None]
        return float(np.mean(values)) if values else None

    return {"map_voc07_11pt": mean("ap_voc07_11pt"), "map_area": mean("ap_area")}


def _share_of(counts: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """``counts / totals`` per class, NaN where the total is 0."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / np.maximum(totals, 1), np.nan)


def _mean_recall(recalls: np.ndarray) -> float:
    """Mean of the recalls of the classes with a test example (NaN marks the others)."""
    if np.all(np.isnan(recalls)):
        raise VggfeatError("no test examples to score")
    return float(np.nanmean(recalls))


def _number(value: float) -> float | None:
    """NaN (undefined, e.g. no positive example) becomes None, which JSON can hold."""
    return None if np.isnan(value) else float(value)
