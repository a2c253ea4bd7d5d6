"""A strategy's phases in the order they run: the prelude once, then the repeated phases R times."""

from __future__ import annotations

from dataclasses import dataclass

from bitune.params import PhaseSpec, StrategyParams


@dataclass(frozen=True)
class PhaseRun:
    """One phase as scheduled: which round, and its position in the whole run (for resume)."""

    index: int
    round: int
    spec: PhaseSpec

    @property
    def key(self) -> str:
        """Stable id for checkpoints, MLflow run names and plots: 'bottom', then 'bottom-r2', ..."""
        return f"{self.spec.name}-r{self.round}" if self.round > 1 else self.spec.name


def expand_strategy(strategy: StrategyParams) -> list[PhaseRun]:
    runs = [PhaseRun(i, 0, spec) for i, spec in enumerate(strategy.prelude)]
    for r in range(1, strategy.rounds + 1):
        for spec in strategy.phases:
            runs.append(PhaseRun(len(runs), r, spec))
    return runs
