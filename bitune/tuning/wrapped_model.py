"""The model as the training loop calls it: DDP-wrapped under several processes, compiled on request."""

from __future__ import annotations

from typing import Any

import torch

from bitune.model.classifier import BituneClassifier
from bitune.tuning.phase_context import PhaseContext


class WrappedModel:
    """Built once per phase and again only when the trainable set changes (DDP registers the
    parameters that need gradients when it wraps). Closing undoes what `prepare_model` left
    behind: its entry in the accelerator's model list (one more per call, never removed by
    accelerate) and, under mixed precision, the autocast wrapper it puts on the model's forward."""

    def __init__(self, model: BituneClassifier, ctx: PhaseContext) -> None:
        self.model, self.ctx = model, ctx
        self.module: torch.nn.Module = model
        self.trainable: frozenset[str] | None = None
        self.registered: list[Any] = []  # what prepare_model appended to accelerator._models
        self.patched_forward = False

    def for_trainable(self) -> torch.nn.Module:
        names = frozenset(n for n, p in self.model.named_parameters() if p.requires_grad)
        if names == self.trainable:
            return self.module
        self.close()
        self.trainable = names
        module: torch.nn.Module = self.model
        if self.ctx.accelerator.num_processes > 1:
            models = self.ctx.accelerator._models
            count, own_forward = len(models), "forward" in vars(self.model)
            module = self.ctx.accelerator.prepare_model(self.model)
            self.registered = models[count:]
            self.patched_forward = not own_forward and "forward" in vars(self.model)
        if self.ctx.compile:
            module = torch.compile(module, dynamic=True)  # type: ignore[assignment]
        self.module = module
        return module

    def close(self) -> None:
        models = self.ctx.accelerator._models
        for added in self.registered:
            at = max((i for i, m in enumerate(models) if m is added), default=None)
            if at is not None:
                del models[at]
        if self.patched_forward:
            vars(self.model).pop("forward", None)
            vars(self.model).pop("_original_forward", None)
        self.module, self.trainable, self.registered, self.patched_forward = self.model, None, [], False
