"""Checks that stop a phase with a one-line error before it wastes time or hands on bad weights:
the NaN/inf guard, a non-finite validation loss, a phase that trains nothing, a foreign checkpoint."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from bitune.errors import ParamsError, TrainingError
from bitune.tuning.freezing import Selected
from bitune.tuning.schedule import PhaseRun


def _weights_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ‖θ‖ over `params`, on the device: non-finite iff any weight is.

    A non-finite gradient at any step leaves non-finite weights behind for good (Adam turns an inf
    into NaN, and NaN stays), so reading this at each guard check catches every bad update,
    however late in an epoch, for a tenth of the cost of a gradient norm at every step.
    """
    if not params:
        return torch.zeros(())
    return torch.stack(torch._foreach_norm([p.detach() for p in params])).sum()


def remedy(lr: float, mixed_precision: str) -> str:
    """What to try after a non-finite loss or weights: a lower lr, and fp32 when bf16 was on."""
    fp32 = " or use train.precision=fp32" if mixed_precision != "no" else ""
    return f"lower the phase's lr (now {lr}){fp32}"


def check_finite(
    loss_sum: torch.Tensor,
    key: str,
    epoch: int,
    step: int,
    fix: str,
    params: Sequence[torch.Tensor] = (),
) -> None:
    """The NaN/inf guard: the epoch's running loss sum and, when given, the trained weights, read
    back together (one sync per call, not per step). `fix`: `remedy(...)`, the message's advice."""
    values = torch.stack([loss_sum.float(), _weights_norm(params).float().to(loss_sum.device)])
    loss, weights = values.tolist()
    if not math.isfinite(loss):
        raise TrainingError(f"{key}: loss became {loss} at epoch {epoch}, by step {step}; {fix}")
    if not math.isfinite(weights):
        raise TrainingError(
            f"{key}: weights became non-finite at epoch {epoch}, by step {step} (a non-finite "
            f"gradient); {fix}"
        )


def check_validation(val: dict[str, float], key: str, epoch: int, fix: str) -> None:
    """Never checkpoint, keep or hand on weights whose validation loss is not finite."""
    if not math.isfinite(val["loss"]):
        raise TrainingError(f"{key}: validation loss became {val['loss']} at epoch {epoch}; {fix}")


def require_parameters(selected: Selected, run: PhaseRun) -> None:
    """A phase whose groups hold no parameters (the pooler under mean pooling) cannot train."""
    if any(p.numel() for _, module in selected for p in module.parameters()):
        return
    spec = run.spec
    raise ParamsError(
        f"strategy phase {spec.name!r} (key {run.key}): train={spec.train} selects no parameters in "
        "this model (the pooler trains only with model.pooling=default); add head or a backbone "
        "group such as layers[-2:] to the phase's train list"
    )


def check_resumable(recorded: list[str] | None, expected: list[str], run: PhaseRun, folder: Path) -> None:
    """A checkpoint resumes only the phase it was written for: the same parameters in the optimizer."""
    if recorded is None or set(recorded) == set(expected):
        return
    only_saved = sorted(set(recorded) - set(expected))
    only_now = sorted(set(expected) - set(recorded))
    raise TrainingError(
        f"{run.key}: checkpoint {folder} was written for other trainable parameters "
        f"(only in checkpoint: {only_saved[:3]}{'…' if len(only_saved) > 3 else ''}, "
        f"only now: {only_now[:3]}{'…' if len(only_now) > 3 else ''}); restore the params and "
        "model it was written with, or delete the folder (or run with --force) to train the phase again"
    )
