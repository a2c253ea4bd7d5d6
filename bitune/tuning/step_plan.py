"""The optimizer steps every phase of a strategy will take, known as soon as the training split's
size is: a bad setting that only shows at a phase's start is refused before the first phase runs.

The counts are the ones the phases use (`optim.token_steps_per_epoch`, `feature_steps_per_epoch`),
so the check and the phase cannot disagree.
"""

from __future__ import annotations

from bitune.params import PhaseSpec, StrategyParams
from bitune.tuning.feature_phase import trains_top_only
from bitune.tuning.optim import check_warmup, feature_steps_per_epoch, phase_steps, token_steps_per_epoch


def planned_steps(spec: PhaseSpec, train_rows: int, processes: int) -> int:
    """Steps of `spec` on `train_rows` training rows (before its `max_train_rows` sample)."""
    rows = min(train_rows, spec.max_train_rows) if spec.max_train_rows else train_rows
    if spec.cache_features and trains_top_only(spec.train):
        return phase_steps(spec, feature_steps_per_epoch(spec, rows))
    return phase_steps(spec, token_steps_per_epoch(spec, rows, processes))


def check_step_plan(strategy: StrategyParams, train_rows: int, processes: int) -> None:
    """Every phase's warmup ends inside it (`optim.check_warmup`), or a ParamsError names the phase."""
    for spec in (*strategy.prelude, *strategy.phases):
        check_warmup(spec, planned_steps(spec, train_rows, processes))
