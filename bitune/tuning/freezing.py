"""Which modules train in a phase, and putting everything else to sleep.

Frozen parameters get `requires_grad=False` (autograd then computes no weight gradients for them)
and frozen modules go to eval mode, so dropout noise in layers that cannot learn from it is off.
"""

from __future__ import annotations

from torch import nn

from bitune.model.classifier import BituneClassifier
from bitune.model.layer_groups import LayerGroups, select_modules

Selected = list[tuple[str, nn.Module]]


def trainable_modules(model: BituneClassifier, names: list[str], groups: LayerGroups) -> Selected:
    """Resolve group names to (qualified name, module); the pooler only counts when it is used."""
    selected = [
        (name, module)
        for name, module in select_modules(groups, [n for n in names if n != "head"])
        if name != "pooler" or model.uses_pooler
    ]
    if "head" in names:
        selected.append(("head", model.head))
    return selected


def freeze_except(model: nn.Module, selected: Selected) -> int:
    """Freeze every parameter outside `selected`; return the number of trainable parameters."""
    model.requires_grad_(False)
    for _, module in selected:
        module.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def set_train_mode(model: nn.Module, selected: Selected) -> None:
    """Train mode for the selected modules only; frozen ones stay in eval mode."""
    model.eval()
    for _, module in selected:
        module.train()


def trainable_names(model: nn.Module) -> list[str]:
    """Names of parameters that currently train: recorded in checkpoints so a resume can check them."""
    return [name for name, p in model.named_parameters() if p.requires_grad]
