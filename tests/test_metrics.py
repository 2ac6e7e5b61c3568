"""Metrics against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from vggfeat.errors import VggfeatError
from vggfeat.metrics import (
    accuracy,
    ap_area,
    ap_voc07_11pt,
    confusion_matrix,
    mean_class_recall,
    multilabel_metrics,
    precision_recall,
    single_label_metrics,
)

# Ranked: +, -, +, -, -  ->  precision 1, 1/2, 2/3, 1/2, 2/5; recall 1/2, 1/2, 1, 1, 1.
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
POSITIVE = np.array([1, 0, 1, 0, 0], dtype=bool)


def test_precision_recall_by_hand():
    precision, recall = precision_recall(SCORES[::-1], POSITIVE[::-1])  # input order does not matter
    np.testing.assert_allclose(precision, [1, 1 / 2, 2 / 3, 1 / 2, 2 / 5])
    np.testing.assert_allclose(recall, [1 / 2, 1 / 2, 1, 1, 1])


def test_ap_area_by_hand():
    # Recall 0 -> 1/2 at precision 1, then 1/2 -> 1 at precision 2/3 (monotone envelope).
    assert ap_area(SCORES, POSITIVE) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_ap_voc07_11pt_by_hand():
    # t = 0, 0.1, ..., 0.5: best precision with recall >= t is 1; t = 0.6 ... 1: 2/3.
    assert ap_voc07_11pt(SCORES, POSITIVE) == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)


def test_ap_voc07_11pt_counts_a_recall_of_exactly_0_6_as_the_devkit_does():
    """The devkit's MATLAB thresholds (0:0.1:1) hold 0.6 as the double nearest it, which a recall
    of 3 of 5 reaches; np.linspace's 0.6000000000000001 did not, lowering the AP by 0.04 here."""
    positive = [1, 1, 1, 0, 0, 0, 0, 1, 1]  # 3 of 5 found at precision 1, then 4/8 and 5/9
    scores = np.arange(len(positive))[::-1]
    assert ap_voc07_11pt(scores, positive) == pytest.approx((7 * 1 + 4 * 5 / 9) / 11)  # t = 0 ... 0.6: 1


def test_ap_of_a_perfect_and_of_a_reversed_ranking():
    assert ap_area([3, 2, 1], [1, 1, 0]) == pytest.approx(1.0)
    assert ap_voc07_11pt([3, 2, 1], [1, 1, 0]) == pytest.approx(1.0)
    # The only positive ranked last of 4: precision 1/4 at recall 1.
    assert ap_area([4, 3, 2, 1], [0, 0, 0, 1]) == pytest.approx(0.25)
    assert ap_voc07_11pt([4, 3, 2, 1], [0, 0, 0, 1]) == pytest.approx(0.25)


def test_ap_without_positives_is_undefined():
    assert np.isnan(ap_area([1, 2], [0, 0]))
    assert np.isnan(ap_voc07_11pt([1, 2], [0, 0]))


def test_accuracy_recall_confusion_by_hand():
    y_true = np.array([0, 0, 0, 1, 2, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 0])
    assert accuracy(y_true, y_pred) == pytest.approx(4 / 6)
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, 3), [[2, 1, 0], [0, 1, 0], [1, 0, 1]])
    assert mean_class_recall(y_true, y_pred, 3) == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    # A class absent from the test set does not count (the mean is over classes with test images).
    assert mean_class_recall(y_true, y_pred, 4) == pytest.approx((2 / 3 + 1 + 1 / 2) / 3)
    with pytest.raises(VggfeatError, match="no test examples"):
        accuracy([], [])


def test_single_label_metrics_bundle():
    y_true = np.array([0, 0, 1, 1])
    scores = np.array([[2.0, 0.0], [0.1, 0.5], [0.0, 1.0], [-1.0, 0.2]])  # predicts 0, 1, 1, 1
    m = single_label_metrics(y_true, scores, ["a", "b"])
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["mean_class_recall"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["confusion_matrix"] == [[1, 1], [0, 2]]
    a, b = m["per_class"]
    assert (a["class"], a["support"], a["recall"], a["precision"]) == ("a", 2, 0.5, 1.0)
    assert b["precision"] == pytest.approx(2 / 3)
    # Class a's scores 2, 0.1, 0, -1 rank its two images first: AP 1.
    assert a["ap_area"] == pytest.approx(1.0)
    # Class b's scores 0, 0.5, 1, 0.2 rank: b(1.0)+, a(0.5)-, b(0.2)+, a(0)-: precision 1, 1/2, 2/3.
    assert b["ap_area"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert m["map_area"] == pytest.approx((1 + 0.5 + 0.5 * 2 / 3) / 2)


def test_multilabel_metrics_skip_classes_without_positives():
    Y = np.array([[1, 0], [0, 0], [1, 0]], dtype=bool)
    scores = np.array([[1.0, 0.3], [0.5, 0.2], [0.8, 0.1]])
    m = multilabel_metrics(Y, scores, ["x", "y"])
    assert m["per_class"][1]["ap_area"] is None
    assert m["map_area"] == pytest.approx(1.0)  # the mean over the one class with positives
    assert m["map_voc07_11pt"] == pytest.approx(1.0)
