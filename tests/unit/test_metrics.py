"""Classification metrics against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from plm_core.finetune.metrics import (
    accuracy,
    binary_f1,
    classification_report,
    confusion_matrix,
    macro_f1,
    per_class_scores,
)

# 3 classes, 8 examples.
#   true: 0 0 0 1 1 2 2 2
#   pred: 0 0 1 1 2 2 2 0
# confusion[true][pred]: row0 = [2,1,0], row1 = [0,1,1], row2 = [1,0,2]
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2]
Y_PRED = [0, 0, 1, 1, 2, 2, 2, 0]


def test_accuracy_and_confusion() -> None:
    assert accuracy(Y_TRUE, Y_PRED) == pytest.approx(5 / 8)
    assert confusion_matrix(Y_TRUE, Y_PRED, 3).tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]


def test_per_class_and_macro() -> None:
    s = per_class_scores(Y_TRUE, Y_PRED, 3)
    # precision = tp / column sum: 2/3, 1/2, 2/3; recall = tp / row sum: 2/3, 1/2, 2/3
    np.testing.assert_allclose(s.precision, [2 / 3, 1 / 2, 2 / 3])
    np.testing.assert_allclose(s.recall, [2 / 3, 1 / 2, 2 / 3])
    np.testing.assert_allclose(s.f1, [2 / 3, 1 / 2, 2 / 3])
    assert s.support.tolist() == [3, 2, 3]
    assert macro_f1(Y_TRUE, Y_PRED, 3) == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)


def test_asymmetric_precision_recall() -> None:
    # true 1 1 1 0, pred 1 0 0 0: class 1 tp=1 fp=0 fn=2 -> P=1, R=1/3, F1=0.5
    # class 0 tp=1 fp=2 fn=0 -> P=1/3, R=1, F1=0.5
    s = per_class_scores([1, 1, 1, 0], [1, 0, 0, 0], 2)
    np.testing.assert_allclose(s.precision, [1 / 3, 1.0])
    np.testing.assert_allclose(s.recall, [1.0, 1 / 3])
    np.testing.assert_allclose(s.f1, [0.5, 0.5])
    assert binary_f1([1, 1, 1, 0], [1, 0, 0, 0]) == pytest.approx(0.5)


def test_class_never_predicted_scores_zero_not_nan() -> None:
    s = per_class_scores([0, 1, 2], [0, 0, 0], 3)
    assert s.precision.tolist() == [1 / 3, 0.0, 0.0]
    assert s.f1[1] == 0.0
    assert binary_f1([0, 0], [0, 0]) == 0.0


def test_report_and_input_checks() -> None:
    report = classification_report([1, 1, 1, 0], [1, 0, 0, 0], ["negative", "positive"])
    assert report["accuracy"] == pytest.approx(0.5)
    assert report["macro_f1"] == pytest.approx(0.5)
    assert report["binary_f1"] == pytest.approx(0.5)
    assert report["confusion"] == [[1, 0], [2, 1]]
    assert report["per_class"]["positive"] == {
        "precision": 1.0,
        "recall": pytest.approx(1 / 3),
        "f1": 0.5,
        "support": 3,
    }
    with pytest.raises(ValueError):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError):
        confusion_matrix([0, 3], [0, 1], 3)
