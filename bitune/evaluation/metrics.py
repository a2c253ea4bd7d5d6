"""Classification metrics from logits: the numbers every phase and the final evaluation report."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


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


def summary_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """accuracy, macro_f1, loss (mean cross-entropy) and ece: what phases log per epoch."""
    logits = logits.float()
    probs = torch.softmax(logits, -1).numpy()
    y = labels.numpy()
    pred = probs.argmax(1)
    return {
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
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
    pred = logits.argmax(-1).numpy()
    p, r, f, s = precision_recall_fscore_support(
        labels.numpy(), pred, labels=list(range(len(names))), zero_division=0
    )
    return [
        ClassReport(n, float(a), float(b), float(c), int(d))
        for n, a, b, c, d in zip(names, p, r, f, s, strict=True)
    ]


def named_metrics(logits: torch.Tensor, labels: torch.Tensor, names: Sequence[str]) -> dict[str, float]:
    """The test scores as logged and compared: `test/<summary metric>`, `test/support/<label>` and
    `test/f1/<label>`. The evaluation and the champion's re-score both call this, so the gate always
    finds the same names on both sides.

    A label with no rows in the split has no F1: sklearn would report 0.0, which reads as a model that
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
    return confusion_matrix(labels.numpy(), logits.argmax(-1).numpy(), labels=list(range(num_labels)))
