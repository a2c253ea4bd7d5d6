"""The evaluation and the champion's re-score name their test scores through one function.

A label with no rows in the test split has no F1: it is left out (not logged as 0.0) and its
support says 0, on both sides, so the gate never compares two made-up zeros.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bitune.evaluation.metrics import named_metrics
from bitune.evaluation.report import evaluate_predictions
from bitune.params import RegistryParams
from bitune.promotion import decide

NAMES = ["negative", "neutral", "positive"]
LOGITS = torch.tensor([[2.0, 0.1, -1.0], [0.5, 0.2, 0.3], [-1.0, 0.4, 1.5], [0.3, 0.1, 0.2], [0.0, 1.0, 0.5]])
ALL_LABELS = torch.tensor([0, 1, 2, 2, 1])
NO_NEUTRAL = torch.tensor([0, 0, 2, 2, 2])  # 'neutral' has no test rows (and is predicted once)


@pytest.mark.parametrize("labels", [ALL_LABELS, NO_NEUTRAL], ids=["all-labels", "no-neutral-rows"])
def test_evaluation_logs_exactly_what_the_rescore_compares(tmp_path: Path, labels: torch.Tensor) -> None:
    evaluated, _ = evaluate_predictions([f"text {i}" for i in range(5)], labels, LOGITS, NAMES, tmp_path)
    rescored = named_metrics(LOGITS, labels, NAMES)  # what the champion's re-score logs
    assert evaluated.keys() == rescored.keys()
    assert evaluated == pytest.approx(rescored)


def test_every_label_with_test_rows_has_its_f1_and_support() -> None:
    metrics = named_metrics(LOGITS, ALL_LABELS, NAMES)
    assert {k for k in metrics if k.startswith("test/f1/")} == {f"test/f1/{n}" for n in NAMES}
    assert [metrics[f"test/support/{n}"] for n in NAMES] == [1.0, 2.0, 2.0]
    assert metrics["test/f1/negative"] == pytest.approx(0.5)  # 1 right, 2 false positives
    assert {"test/accuracy", "test/macro_f1", "test/loss", "test/ece"} <= metrics.keys()


def test_a_label_without_test_rows_has_no_f1_but_support_zero(tmp_path: Path) -> None:
    metrics, paths = evaluate_predictions(
        [f"text {i}" for i in range(5)], NO_NEUTRAL, LOGITS, NAMES, tmp_path
    )
    assert "test/f1/neutral" not in metrics
    assert metrics["test/support/neutral"] == 0.0
    assert metrics["test/f1/negative"] > 0 and "test/f1/positive" in metrics
    report = paths[0].read_text()
    assert "| neutral | 0.000 | n/a | n/a | 0 |" in report  # predicted once, never right; no recall


def test_a_label_with_rows_that_is_never_predicted_keeps_its_zero_f1() -> None:
    """Zero F1 is a real score when the label has rows: it must stay, or the gate could not see it."""
    logits = torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 2.0]])
    metrics = named_metrics(logits, torch.tensor([0, 1, 2]), NAMES)
    assert metrics["test/f1/neutral"] == 0.0 and metrics["test/support/neutral"] == 1.0


def test_a_gate_on_a_label_without_test_rows_keeps_the_champion() -> None:
    """Both sides are scored on the same test split, so both lack the F1: no promotion on a non-score."""
    challenger = named_metrics(LOGITS, NO_NEUTRAL, NAMES)
    champion = named_metrics(-LOGITS, NO_NEUTRAL, NAMES)
    decision = decide(challenger, champion, RegistryParams(metric="test/f1/neutral"))
    assert not decision.promote
    assert "label 'neutral' has no rows in the test split" in decision.summary()
    # the other gate metrics still compare
    assert decide(challenger, champion, RegistryParams(metric="test/f1/positive")).promote
