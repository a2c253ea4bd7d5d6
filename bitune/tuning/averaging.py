"""An exponential moving average (EMA) of the weights a phase trains.

On small data the last SGD iterate wanders around a flat region; the average of recent iterates
sits nearer its centre and usually generalises better (Polyak averaging; SWA, Izmailov et al. 2018).
The average is what a phase evaluates, keeps as its best epoch and hands on; training itself steps
the raw weights, so the optimizer never sees the average.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


class WeightAverage:
    """A bias-corrected EMA (as Adam corrects its moments): after t updates the average weighs
    update i by d^(t−i), normalised, so it starts at the first iterate rather than at the starting
    weights, and `decay` sets only the horizon, about 1/(1 − d) optimizer steps."""

    def __init__(self, params: list[torch.Tensor], decay: float) -> None:
        self.params = params
        self.decay = decay
        self.updates = 0
        self.shadow = [p.detach().clone() for p in params]

    def next_weight(self) -> float:
        """Weight of the new iterate: (1 − d) / (1 − d^t) for the t-th update (1 for the first)."""
        return (1.0 - self.decay) / (1.0 - self.decay ** (self.updates + 1))

    @torch.no_grad()
    def update(self) -> None:
        """Called after each optimizer step: shadow ← shadow + w_t·(θ − shadow)."""
        weight = self.next_weight()
        self.updates += 1
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], weight)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The averaged weights in the model for the block; the raw ones are put back after it."""
        with torch.no_grad():
            raw = [p.detach().clone() for p in self.params]
            torch._foreach_copy_(self.params, self.shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, raw)

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Keep the average for good: the end of a phase that hands its averaged weights on."""
        torch._foreach_copy_(self.params, self.shadow)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "shadow": [s.detach().cpu() for s in self.shadow]}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        saved = [s.to(mine.device) for s, mine in zip(state["shadow"], self.shadow, strict=True)]
        torch._foreach_copy_(self.shadow, saved)
