"""Device and precision, resolved once: CUDA with bf16 autocast when present, else CPU fp32.

`accelerate` owns the process group, so the same code runs as one process or under
`accelerate launch` (DDP, CPU gloo or GPUs) without change.
"""

from __future__ import annotations

import os
from functools import cache

import torch
from accelerate import Accelerator

from bitune.errors import TrainingError
from bitune.params import TrainParams


def resolve_precision(train: TrainParams, device: str) -> str:
    if train.precision == "auto":
        return "bf16" if device == "cuda" and torch.cuda.is_bf16_supported() else "no"
    if train.precision == "bf16" and device == "cuda" and not torch.cuda.is_bf16_supported():
        raise TrainingError("train.precision: bf16 is not supported by this GPU; use fp32 or auto")
    return "no" if train.precision == "fp32" else "bf16"


def check_device(train: TrainParams) -> None:
    """`train.device` and `train.precision` work on this machine: said before the data step, not
    when the first phase starts."""
    resolve_precision(train, resolve_device(train))


def resolve_device(train: TrainParams) -> str:
    if train.device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device: cuda requested but no CUDA device is visible; use auto or cpu")
    if train.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return train.device


@cache
def _accelerator(cpu: bool, mixed_precision: str) -> Accelerator:
    # No data loader goes through accelerate: under DDP the phase gives each process its slice of
    # every batch itself (bitune.tuning.batching.shard_batches), so the global batch, and with it the
    # optimisation, is the same for 1 or N processes and no row is dropped or repeated.
    return Accelerator(cpu=cpu, mixed_precision=mixed_precision)


def launched_distributed() -> bool:
    """True inside `accelerate launch` / torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def reset_accelerator() -> None:
    """Forget this process's Accelerator so the next `make_accelerator` may change precision.

    For scripts that run several configurations in one process (a Trainer baseline in fp32, then
    bitune in bf16): accelerate keeps its state in a process-wide singleton that refuses a change.
    Never call it while a phase is running.
    """
    from accelerate.state import AcceleratorState

    _accelerator.cache_clear()
    AcceleratorState._reset_state(reset_partial_state=True)


def make_accelerator(train: TrainParams) -> Accelerator:
    """One Accelerator per process (its state is a process-wide singleton)."""
    device = resolve_device(train)
    if train.torch_threads:
        torch.set_num_threads(train.torch_threads)
    return _accelerator(device == "cpu", resolve_precision(train, device))
