"""The names a scheduled phase goes by outside the training loop: its params key and its metrics.

Messages name the params key a user edits (`strategy.phases.1`); MLflow metrics are named
`phase/split/metric` (`bottom/val/accuracy`), the same for every phase, so runs compare in one view.
"""

from __future__ import annotations

from bitune.params import StrategyParams
from bitune.tuning.phase import PhaseResult
from bitune.tuning.schedule import PhaseRun

SPLITS = ("train", "val")


def phase_field(strategy: StrategyParams, run: PhaseRun) -> str:
    """The params key of a scheduled phase: 'strategy.prelude.N' or 'strategy.phases.N' (any round)."""
    prelude = len(strategy.prelude)
    if run.index < prelude:
        return f"strategy.prelude.{run.index}"
    return f"strategy.phases.{(run.index - prelude) % len(strategy.phases)}"


def epoch_metrics(phase: str, metrics: dict[str, float]) -> dict[str, float]:
    """'val_accuracy' -> 'bottom/val/accuracy', 'train_loss' -> 'bottom/train/loss'; others 'bottom/<key>'."""
    out = {}
    for key, value in metrics.items():
        split, _, name = key.partition("_")
        out[f"{phase}/{split}/{name}" if split in SPLITS else f"{phase}/{key}"] = value
    return out


def step_metrics(phase: str, metrics: dict[str, float]) -> dict[str, float]:
    """Per-optimizer-step numbers: 'loss' -> 'bottom/train/step_loss', apart from the epoch's 'train/loss'."""
    return {f"{phase}/train/step_{k}": v for k, v in metrics.items()}


def phase_summary(
    phase: str, result: PhaseResult, cka: float, drift: dict[str, float], wall_seconds: float
) -> dict[str, float]:
    """The numbers logged once when a phase ends.

    Both the best epoch seen (`val/best_*`) and the epoch whose weights were handed on
    (`val/kept_*`): they differ unless early stopping kept the best. Then timing, size, forgetting
    (CKA to the pretrained encoder) and the weight drift of each layer group (`drift/<group>`).
    """

    def validation(prefix: str, entry: dict[str, float]) -> dict[str, float]:
        return {
            f"{phase}/val/{prefix}_{k.removeprefix('val_')}": v
            for k, v in entry.items()
            if k.startswith("val_")
        }

    return (
        validation("best", result.best)
        | validation("kept", result.kept)
        | {
            f"{phase}/kept_epoch": float(result.kept_epoch),
            f"{phase}/cka_to_pretrained": cka,
            f"{phase}/train_seconds": result.train_seconds,
            f"{phase}/wall_seconds": wall_seconds,
            f"{phase}/train_samples_per_s": result.samples_per_second,
            f"{phase}/trainable_params": float(result.trainable_params),
            f"{phase}/best_epoch": float(result.best_epoch),
        }
        | {f"{phase}/drift/{group}": value for group, value in drift.items()}
    )
