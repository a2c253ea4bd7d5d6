"""Classification metrics from logits: the numbers every phase and the final evaluation report.

Counted from one confusion matrix in numpy, not imported from scikit-learn: that import costs about
2 s in every `bitune` process, most of which (a skipped run, a refused one) never score anything.
The definitions are scikit-learn's, zero_division=0 included; tests/test_metrics.py checks them
against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE over equal-width confidence bins (Guo et al. 2017)."""
    confidence = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


def confusion_counts(labels: np.ndarray, predicted: np.ndarray, num_labels: int) -> np.ndarray:
    """[true label, predicted label] counts; pairs outside `range(num_labels)` are not counted."""
    inside = (labels >= 0) & (labels < num_labels) & (predicted >= 0) & (predicted < num_labels)
    pairs = labels[inside].astype(np.int64) * num_labels + predicted[inside].astype(np.int64)
    return np.bincount(pairs, minlength=num_labels * num_labels).reshape(num_labels, num_labels)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    out = np.zeros(numerator.shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def precision_recall_f1_support(
    counts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per label, from a confusion matrix: precision, recall, F1 (0 where undefined) and support."""
    true_positive = np.diag(counts).astype(np.float64)
    predicted = counts.sum(0).astype(np.float64)
    support = counts.sum(1)
    precision = _ratio(true_positive, predicted)
    recall = _ratio(true_positive, support.astype(np.float64))
    f1 = _ratio(2 * true_positive, predicted + support)
    return precision, recall, f1, support


def summary_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """accuracy, macro_f1, loss (mean cross-entropy) and ece: what phases log per epoch."""
    logits = logits.float()
    probs = torch.softmax(logits, -1).numpy()
    y = labels.numpy()
    pred = probs.argmax(1)
    num_labels = int(max(y.max(initial=0), pred.max(initial=0))) + 1
    counts = confusion_counts(y, pred, num_labels)
    seen = (counts.sum(0) + counts.sum(1)) > 0  # macro F1 averages the labels that occur in y or pred
    f1 = precision_recall_f1_support(counts)[2]
    return {
        "accuracy": float((y == pred).mean()) if len(y) else 0.0,
        "macro_f1": float(f1[seen].mean()) if seen.any() else 0.0,
        "loss": float(torch.nn.functional.cross_entropy(logits, labels).item()),
        "ece": expected_calibration_error(probs, y),
    }


@dataclass(frozen=True)
class ClassReport:
    label: str
    precision: float
    recall: float
    f1: float
    support: int


def per_class_report(logits: torch.Tensor, labels: torch.Tensor, names: list[str]) -> list[ClassReport]:
    counts = confusion_counts(labels.numpy(), logits.argmax(-1).numpy(), len(names))
    p, r, f, s = precision_recall_f1_support(counts)
    return [
        ClassReport(n, float(a), float(b), float(c), int(d))
        for n, a, b, c, d in zip(names, p, r, f, s, strict=True)
    ]


def named_metrics(logits: torch.Tensor, labels: torch.Tensor, names: Sequence[str]) -> dict[str, float]:
    """The test scores as logged and compared: `test/<summary metric>`, `test/support/<label>` and
    `test/f1/<label>`. The evaluation and the champion's re-score both call this, so the gate always
    finds the same names on both sides.

    A label with no rows in the split has no F1: scikit-learn's rule reports 0.0, which reads as a model that
    never gets the label right. Its `test/f1/<label>` is left out and `test/support/<label>` is 0, so a
    gate on that label finds the metric missing instead of comparing two made-up zeros.
    """
    metrics = {f"test/{k}": v for k, v in summary_metrics(logits, labels).items()}
    for c in per_class_report(logits, labels, list(names)):
        metrics[f"test/support/{c.label}"] = float(c.support)
        if c.support:
            metrics[f"test/f1/{c.label}"] = c.f1
    return metrics


def confusion(logits: torch.Tensor, labels: torch.Tensor, num_labels: int) -> np.ndarray:
    return confusion_counts(labels.numpy(), logits.argmax(-1).numpy(), num_labels)
