"""Classification metrics in plain numpy.

Hand-written rather than scikit-learn because the pipeline needs five formulas, and pulling
scikit-learn (and scipy) into the serving environment for them is not worth it. Conventions follow
scikit-learn: ``confusion[true, pred]``; a precision or recall whose denominator is 0 is 0; macro
averages weigh every class in the label set equally, including classes absent from the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def _as_arrays(y_true: Sequence[int], y_pred: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D of equal length, got {t.shape} and {p.shape}")
    if t.size == 0:
        raise ValueError("no predictions to score")
    return t, p


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    t, p = _as_arrays(y_true, y_pred)
    return float(np.mean(t == p))


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> np.ndarray:
    """(num_labels, num_labels) counts; row = true label, column = predicted label."""
    t, p = _as_arrays(y_true, y_pred)
    if min(t.min(), p.min()) < 0 or max(t.max(), p.max()) >= num_labels:
        raise ValueError(f"label ids must lie in [0, {num_labels})")
    return np.bincount(t * num_labels + p, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


@dataclass
class PerClass:
    """Per-class scores, index = label id."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray


def per_class_scores(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> PerClass:
    cm = confusion_matrix(y_true, y_pred, num_labels).astype(np.float64)
    tp = np.diag(cm)
    precision = _safe_div(tp, cm.sum(axis=0))
    recall = _safe_div(tp, cm.sum(axis=1))
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return PerClass(precision, recall, f1, cm.sum(axis=1).astype(np.int64))


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int], num_labels: int) -> float:
    return float(per_class_scores(y_true, y_pred, num_labels).f1.mean())


def binary_f1(y_true: Sequence[int], y_pred: Sequence[int], positive: int = 1) -> float:
    """F1 of the positive class (GLUE's MRPC/QQP convention)."""
    t, p = _as_arrays(y_true, y_pred)
    tp = float(np.sum((t == positive) & (p == positive)))
    fp = float(np.sum((t != positive) & (p == positive)))
    fn = float(np.sum((t == positive) & (p != positive)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def classification_report(
    y_true: Sequence[int], y_pred: Sequence[int], label_names: Sequence[str]
) -> dict[str, Any]:
    """Everything the evaluate stage reports, JSON-ready; ``binary_f1`` (label id 1) for two labels."""
    k = len(label_names)
    scores = per_class_scores(y_true, y_pred, k)
    report: dict[str, Any] = {
        "accuracy": accuracy(y_true, y_pred),
        "macro_precision": float(scores.precision.mean()),
        "macro_recall": float(scores.recall.mean()),
        "macro_f1": float(scores.f1.mean()),
        "n": len(y_true),
        "labels": list(label_names),
        "confusion": confusion_matrix(y_true, y_pred, k).tolist(),
        "per_class": {
            name: {
                "precision": float(scores.precision[i]),
                "recall": float(scores.recall[i]),
                "f1": float(scores.f1[i]),
                "support": int(scores.support[i]),
            }
            for i, name in enumerate(label_names)
        },
    }
    if k == 2:
        report["binary_f1"] = binary_f1(y_true, y_pred, positive=1)
    return report
