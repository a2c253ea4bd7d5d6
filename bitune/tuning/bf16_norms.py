"""LayerNorm that keeps bf16 in and out under bf16 autocast, so the residual stream stays bf16.

Autocast runs `layer_norm` in fp32 and returns fp32, so every hidden state between two matmuls (the
residual adds, dropout, the next norm) is read and written at 4 bytes a value, not 2. On a GPU that
element-wise traffic is about a third of a bottom-phase step (the H100 profile in
docs/benchmarks.md). Here the norm reads and writes bf16 while its statistics are still accumulated
in fp32 inside the kernel; the weights and the optimizer stay fp32 (autocast casts them per
forward), so nothing else about training changes. Without autocast (fp32 training, evaluation
outside the phase, a saved model) the module is a plain `nn.LayerNorm`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Bf16LayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` with the same parameters and state dict; only its forward under autocast differs."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002  (nn.LayerNorm's own name)
        device = input.device.type
        if not torch.is_autocast_enabled(device) or torch.get_autocast_dtype(device) != torch.bfloat16:
            return super().forward(input)
        with torch.autocast(device, enabled=False):
            weight = None if self.weight is None else self.weight.to(torch.bfloat16)
            bias = None if self.bias is None else self.bias.to(torch.bfloat16)
            return F.layer_norm(input.to(torch.bfloat16), self.normalized_shape, weight, bias, self.eps)


def use_bf16_norms(model: nn.Module) -> int:
    """Make every plain `nn.LayerNorm` in `model` a `Bf16LayerNorm`, in place; how many changed.

    The class is swapped rather than the module replaced, so module and parameter identities (the
    layer groups, the optimizer, DDP) are untouched. Subclasses of `nn.LayerNorm` are left alone:
    their own forward may do more than normalise. Idempotent."""
    changed = 0
    for module in model.modules():
        if type(module) is nn.LayerNorm:
            module.__class__ = Bf16LayerNorm
            changed += 1
    return changed
