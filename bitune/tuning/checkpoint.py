"""Per-epoch checkpoints of a phase, so a crashed or killed run resumes where it stopped.

Weights are safetensors; optimizer, scheduler and RNG state go through `torch.save` and are read
back with `weights_only=True` (tensors and plain containers only, no pickled code). The trainable
set is recorded so a resume can check it rebuilds the same optimizer.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from bitune.errors import TrainingError

STATE = "state.json"


def rng_state() -> dict[str, Any]:
    """Every generator's full state as tensors and plain numbers (loadable with `weights_only`):
    numpy's position and cached Gaussian and Python's `gauss_next` too, so draws after a resume
    are the draws an uninterrupted run would have made."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)  # type: ignore[misc]
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": np.asarray(keys).tolist(),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np.asarray(numpy["keys"], dtype=np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class EpochCheckpoint:
    epoch: int
    info: dict[str, Any]
    weights: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor] | None
    training_state: dict[str, Any]


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


class PhaseCheckpoints:
    """A folder holding the latest epoch of one phase; written atomically (temp dir, then rename)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def save(
        self,
        epoch: int,
        info: dict[str, Any],
        trainable: dict[str, torch.Tensor],
        best: dict[str, torch.Tensor] | None,
        training_state: dict[str, Any],
    ) -> None:
        tmp = self.folder.with_name(self.folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(_contiguous(trainable), str(tmp / "trainable.safetensors"))
        if best is not None:
            save_file(_contiguous(best), str(tmp / "best.safetensors"))
        torch.save(training_state, tmp / "training_state.pt")
        (tmp / STATE).write_text(json.dumps({"epoch": epoch, **info}))
        old = self.folder.with_name(self.folder.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if self.folder.exists():
            os.replace(self.folder, old)
        os.replace(tmp, self.folder)
        shutil.rmtree(old, ignore_errors=True)

    def load(self) -> EpochCheckpoint | None:
        if not (self.folder / STATE).exists():
            return None
        try:
            info = json.loads((self.folder / STATE).read_text())
            best_file = self.folder / "best.safetensors"
            return EpochCheckpoint(
                epoch=int(info.pop("epoch")),
                info=info,
                weights=load_file(str(self.folder / "trainable.safetensors")),
                best=load_file(str(best_file)) if best_file.exists() else None,
                training_state=torch.load(self.folder / "training_state.pt", weights_only=True),
            )
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise TrainingError(
                f"{self.folder}: checkpoint is unreadable ({type(exc).__name__}); delete the folder or "
                "run with --force to start the phase again"
            ) from None

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
