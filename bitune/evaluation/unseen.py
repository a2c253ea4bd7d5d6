"""Which test rows the promotion gate may score the champion on: those it has never seen.

A row the champion trained on (or chose its epoch on) flatters it, so the gate leaves such rows out
and scores both models on the rest. Pure: the test texts, labels and the champion's fingerprints in,
a row mask and the words for the decision out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bitune.data.seen import text_key_fingerprints
from bitune.params import PER_CLASS_F1
from bitune.promotion import GateDecision
from bitune.tag_names import GATE_EXCLUDED_ROWS, GATE_TEST_ROWS

MACRO_F1 = "test/macro_f1"
# the gate's metrics that average over every label: with a label gone they average over fewer
PER_LABEL_AVERAGES = (MACRO_F1,)


@dataclass(frozen=True, eq=False)
class GateRows:
    """The challenger's test rows and which of them the champion is compared on."""

    keep: np.ndarray  # bool per test row: the champion has not seen its text
    labels: tuple[str, ...]  # label per test row
    recorded: bool  # False: the champion has no record of its training rows, so all rows are kept

    @property
    def total(self) -> int:
        return len(self.labels)

    @property
    def kept(self) -> int:
        return int(self.keep.sum())

    @property
    def excluded(self) -> int:
        return self.total - self.kept

    def lost_labels(self) -> list[str]:
        """Labels with test rows, none of them unseen by the champion."""
        kept = {label for label, k in zip(self.labels, self.keep, strict=True) if k}
        return sorted(set(self.labels) - kept)

    def blocker(self, metric: str) -> str | None:
        """Why `metric` cannot be compared on the unseen rows, or None when it can."""
        if self.kept == 0:
            return (
                f"all {self.total} test rows were in the champion's training data (data.split changed "
                "since it was trained?), so there is nothing fair to compare on"
            )
        for label in self.lost_labels():
            if metric in PER_LABEL_AVERAGES or metric == f"{PER_CLASS_F1}{label}":
                return (
                    f"every test row of label {label!r} was in the champion's training data, "
                    f"so {metric} cannot be compared on unseen rows"
                )
        return None

    def problem(self, metric: str, challenger_version: str) -> str | None:
        """The blocker with how to get past it: the gate then keeps the champion."""
        blocker = self.blocker(metric)
        if blocker is None:
            return None
        return (
            f"{blocker}; keep data.split (seed and fractions) as the champion was trained with, "
            f"or promote manually with `bitune promote {challenger_version} --force`"
        )

    def note(self) -> str | None:
        """What the decision should say about the rows it compared on; None when that is all of them."""
        if not self.recorded:
            return (
                f"compared on all {self.total} test rows: the champion has no record of its training rows, "
                "so some may be rows it trained on"
            )
        if self.excluded:
            return (
                f"compared on {self.kept} of {self.total} test rows: "
                f"{self.excluded} {'was' if self.excluded == 1 else 'were'} in the champion's training data"
            )
        return None

    def tags(self) -> dict[str, str]:
        """The counts as model-version tags: `bitune.gate_test_rows`, `bitune.gate_excluded_rows`."""
        return {
            GATE_TEST_ROWS: str(self.kept),
            GATE_EXCLUDED_ROWS: str(self.excluded) if self.recorded else "unknown",
        }

    def annotate(self, decision: GateDecision) -> GateDecision:
        """The decision with the note on its rows first, so the reason says what was compared."""
        note = self.note()
        return GateDecision(decision.promote, [note, *decision.reasons]) if note else decision


def gate_rows(texts: Sequence[object], labels: Sequence[object], seen: np.ndarray | None) -> GateRows:
    """Keep the test rows whose split key is not among `seen` (the champion's stored fingerprints);
    `seen` None (a model saved before they were stored) keeps every row."""
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    names = tuple(str(label) for label in labels)
    if seen is None:
        return GateRows(np.ones(len(texts), dtype=bool), names, recorded=False)
    keep = ~np.isin(text_key_fingerprints(texts), seen)
    return GateRows(keep, names, recorded=True)
