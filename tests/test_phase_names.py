"""How a phase is named outside the loop: its params key in messages, its metrics in MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitune.params import load_params
from bitune.tuning.phase import PhaseResult
from bitune.tuning.phase_names import epoch_metrics, phase_field, phase_summary, step_metrics
from bitune.tuning.schedule import PhaseRun, expand_strategy

PARAMS = Path(__file__).resolve().parents[1] / "params" / "default.yaml"


def test_every_scheduled_phase_names_the_params_key_a_user_edits() -> None:
    """LP-FT over 2 rounds: probe once (prelude), then full twice; both rounds name phases.0."""
    strategy = load_params(PARAMS, ["strategy=lp_ft", "strategy.rounds=2"]).strategy
    runs = expand_strategy(strategy)
    assert [(run.key, phase_field(strategy, run)) for run in runs] == [
        ("probe", "strategy.prelude.0"),
        ("full", "strategy.phases.0"),
        ("full-r2", "strategy.phases.0"),
    ]
    two_phases = load_params(PARAMS, ["strategy=bidirectional", "strategy.rounds=2"]).strategy
    assert [phase_field(two_phases, run) for run in expand_strategy(two_phases)] == [
        "strategy.phases.0",
        "strategy.phases.1",
        "strategy.phases.0",
        "strategy.phases.1",
    ]


def test_epoch_metrics_are_named_phase_split_metric() -> None:
    epoch = {"val_accuracy": 0.9, "val_macro_f1": 0.8, "train_loss": 0.3, "lr": 1e-3, "epoch_seconds": 2.0}
    assert epoch_metrics("bottom", epoch) == {
        "bottom/val/accuracy": 0.9,
        "bottom/val/macro_f1": 0.8,  # split on the first '_' only
        "bottom/train/loss": 0.3,
        "bottom/lr": 1e-3,  # no split: phase/metric
        "bottom/epoch_seconds": 2.0,
    }


def test_step_metrics_stay_apart_from_the_epoch_train_loss() -> None:
    named = step_metrics("head", {"loss": 0.5, "lr": 2e-5})
    assert named == {"head/train/step_loss": 0.5, "head/train/step_lr": 2e-5}
    assert not named.keys() & epoch_metrics("head", {"train_loss": 0.5}).keys()


def test_phase_summary_reports_best_and_kept_epochs_apart() -> None:
    """Without early stopping the kept (last) epoch is not the best: the summary must show both."""
    result = PhaseResult(
        key="bottom",
        best_epoch=1,
        best={"val_accuracy": 0.9, "val_loss": 0.2, "train_loss": 0.1},
        kept_epoch=3,
        kept={"val_accuracy": 0.85, "val_loss": 0.3, "train_loss": 0.05},
        trainable_params=1234,
        train_seconds=4.0,
        train_samples=200,
    )
    summary = phase_summary("bottom", result, 0.97, {"embeddings": 0.01, "layers.0": 0.02}, wall_seconds=5.5)
    assert summary == {
        "bottom/val/best_accuracy": 0.9,
        "bottom/val/best_loss": 0.2,
        "bottom/val/kept_accuracy": 0.85,
        "bottom/val/kept_loss": 0.3,
        "bottom/kept_epoch": 3.0,
        "bottom/cka_to_pretrained": 0.97,
        "bottom/train_seconds": 4.0,
        "bottom/wall_seconds": 5.5,
        "bottom/train_samples_per_s": pytest.approx(50.0),
        "bottom/trainable_params": 1234.0,
        "bottom/best_epoch": 1.0,
        "bottom/drift/embeddings": 0.01,
        "bottom/drift/layers.0": 0.02,
    }
    assert all(isinstance(v, float) for v in summary.values())  # MLflow metrics are floats


def test_the_training_loop_s_step_numbers_get_the_documented_names() -> None:
    """The loop's per-step keys, through `step_metrics`: `bottom/train/step_loss`, not
    `step_train_loss` (the loop once passed the epoch's key, `train_loss`)."""
    from test_tuning_engine import DATA, context, model_for, phase

    from bitune.tuning.phase import run_phase

    model, logged = model_for(), []
    ctx = context(model, log_every=1, on_step=lambda metrics, step: logged.append(metrics))
    run_phase(model, PhaseRun(0, 1, phase(epochs=1)), DATA, ctx)
    assert logged and set(step_metrics("bottom", logged[0])) == {
        "bottom/train/step_loss",
        "bottom/train/step_anchor",
        "bottom/train/step_lr",
    }
