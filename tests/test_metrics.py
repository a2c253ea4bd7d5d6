"""bitune's metrics are scikit-learn's definitions, counted without importing it (2 s a process)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from bitune.evaluation.metrics import confusion, per_class_report, summary_metrics


def case(seed: int, rows: int, classes: int, skip: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits and labels; labels in `skip` never occur (and are never predicted when the
    logits there are pushed down)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, classes, generator=generator)
    labels = torch.randint(0, classes, (rows,), generator=generator)
    for label in skip:
        labels[labels == label] = (label + 1) % classes
        logits[:, label] -= 100
    return logits, labels


CASES = [
    case(0, 50, 2),
    case(1, 200, 5),
    case(2, 7, 4),  # some classes have no rows or no predictions
    case(3, 100, 3, skip=(1,)),  # a class neither true nor predicted: not in the macro average
    case(4, 1, 2),
]


@pytest.mark.parametrize(("logits", "labels"), CASES)
def test_summary_metrics_match_scikit_learn(logits: torch.Tensor, labels: torch.Tensor) -> None:
    y, pred = labels.numpy(), logits.argmax(-1).numpy()
    got = summary_metrics(logits, labels)
    assert got["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    assert got["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", zero_division=0), abs=1e-12)


@pytest.mark.parametrize(("logits", "labels"), CASES)
def test_per_class_report_and_confusion_match_scikit_learn(
    logits: torch.Tensor, labels: torch.Tensor
) -> None:
    classes = logits.shape[1]
    names = [f"c{i}" for i in range(classes)]
    y, pred = labels.numpy(), logits.argmax(-1).numpy()
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=list(range(classes)), zero_division=0)
    report = per_class_report(logits, labels, names)
    assert [c.label for c in report] == names
    np.testing.assert_allclose([c.precision for c in report], p, atol=1e-12)
    np.testing.assert_allclose([c.recall for c in report], r, atol=1e-12)
    np.testing.assert_allclose([c.f1 for c in report], f, atol=1e-12)
    assert [c.support for c in report] == list(s)
    np.testing.assert_array_equal(
        confusion(logits, labels, classes), confusion_matrix(y, pred, labels=list(range(classes)))
    )


def test_the_metrics_do_not_import_scikit_learn() -> None:
    code = "import sys, bitune.evaluation.report; print('sklearn' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr[-1000:]
