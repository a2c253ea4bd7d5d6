"""The one place optimizers and schedulers are built: per phase, for that phase's trainable set.

The Hugging Face Trainer builds one optimizer for the whole run, which is why freezing schedules
break there; here every phase gets its own, with layer-wise learning-rate decay (ULMFiT's
discriminative rates) and no weight decay on biases and norms.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from bitune.errors import ParamsError
from bitune.model.layer_groups import layer_depth
from bitune.params import PhaseSpec
from bitune.tuning.batching import batch_count
from bitune.tuning.freezing import Selected


def build_optimizer(selected: Selected, spec: PhaseSpec, num_layers: int) -> torch.optim.AdamW:
    param_groups = []
    for name, module in selected:
        depth = 0 if name == "head" else layer_depth(name, num_layers)
        lr = spec.lr * spec.layer_lr_decay**depth
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for pname, param in module.named_parameters():
            (no_decay if param.ndim < 2 or "norm" in pname.lower() else decay).append(param)
        for params, wd in ((decay, spec.weight_decay), (no_decay, 0.0)):
            if params:
                param_groups.append({"params": params, "lr": lr, "weight_decay": wd, "group": name})
    devices = {p.device.type for _, module in selected for p in module.parameters()}
    # fused: one kernel for the whole update instead of a few per tensor. On a 2-core CPU it is 4.6×
    # faster than the default foreach update (14 vs 64 ms a step for MiniLM), a quarter of a bottom
    # step; the Trainer's default optimizer (adamw_torch_fused) already is fused.
    fused = len(devices) == 1 and devices <= {"cpu", "cuda"}
    return torch.optim.AdamW(param_groups, lr=spec.lr, fused=fused or None)


def token_steps_per_epoch(spec: PhaseSpec, rows: int, processes: int) -> int:
    """Optimizer steps an epoch takes on tokens: one per `grad_accum` length-grouped batches."""
    return math.ceil(batch_count(rows, spec.batch_size, processes) / spec.grad_accum)


def feature_steps_per_epoch(spec: PhaseSpec, rows: int) -> int:
    """Optimizer steps an epoch takes on cached features: one per window of batch × grad_accum rows."""
    return math.ceil(rows / (spec.batch_size * spec.grad_accum))


def phase_epochs(spec: PhaseSpec, steps_per_epoch: int) -> int:
    """Epochs the phase runs: `epochs`; without it, enough for `max_steps` (the last cut short), or 1."""
    if spec.epochs is not None:
        return spec.epochs
    if spec.max_steps:
        return math.ceil(spec.max_steps / max(steps_per_epoch, 1))
    return 1


def phase_steps(spec: PhaseSpec, steps_per_epoch: int) -> int:
    """Optimizer steps the phase will take: its epochs' steps, cut short by `max_steps`.

    The schedule spans exactly these, so a linear or cosine decay ends where training ends: with
    `max_steps` past the last epoch, a schedule over `max_steps` would stop early at a high lr.
    """
    planned = steps_per_epoch * phase_epochs(spec, steps_per_epoch)
    return min(planned, spec.max_steps) if spec.max_steps else planned


def warmup_steps(spec: PhaseSpec, total_steps: int) -> int:
    return int(spec.warmup * total_steps) if spec.warmup < 1 else int(spec.warmup)


def check_warmup(spec: PhaseSpec, total_steps: int) -> None:
    """A warmup in steps must end inside the phase.

    Otherwise the lr would still be climbing when the phase ends: it trains at a sliver of `lr`, and
    the run registers a model that barely moved, with exit 0.
    """
    warm = warmup_steps(spec, total_steps)
    if spec.warmup >= 1 and warm >= total_steps:
        raise ParamsError(
            f"strategy phase {spec.name!r}: warmup {warm} steps, but the phase takes {total_steps}; "
            "give warmup as a fraction of the phase (e.g. 0.1) or fewer steps"
        )


def build_scheduler(optimizer: torch.optim.Optimizer, spec: PhaseSpec, total_steps: int) -> LambdaLR:
    check_warmup(spec, total_steps)
    warm = warmup_steps(spec, total_steps)
    total = max(total_steps, 1)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if spec.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        if spec.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return LambdaLR(optimizer, factor)
