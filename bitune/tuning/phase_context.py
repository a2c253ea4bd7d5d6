"""What a phase takes in and hands back, shared by the token loop (`phase`) and the cached-feature
loop (`feature_phase`), plus the per-epoch bookkeeping both use to decide which weights they keep."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from bitune.model.classifier import BituneClassifier
from bitune.model.layer_groups import LayerGroups, resolve_layer_groups
from bitune.params import PhaseSpec
from bitune.tuning.averaging import WeightAverage
from bitune.tuning.batching import length_grouped_batches, pad_batch
from bitune.tuning.checkpoint import PhaseCheckpoints

Rows = list[dict[str, Any]]
MetricsHook = Callable[[dict[str, float], int], None]


@dataclass
class PhaseData:
    train: Rows
    validation: Rows
    pad_token_id: int


@dataclass
class PhaseContext:
    accelerator: Accelerator
    groups: LayerGroups
    pretrained: dict[str, torch.Tensor]  # backbone parameters before any tuning (anchor, drift)
    seed: int = 0
    eval_batch_size: int = 128
    checkpoints: PhaseCheckpoints | None = None
    feature_cache: Path | None = None  # used only while the backbone is still pretrained
    on_step: MetricsHook | None = None  # (metrics, global step), every `log_every` optimizer steps
    on_epoch: MetricsHook | None = None  # (metrics, epoch)
    log_every: int = 10  # also how often the NaN guard reads the loss and weights back (a GPU sync)
    progress: bool = True  # tqdm bars for training (main process only); evaluation's only when asked
    compile: bool = False  # torch.compile the forward pass (dynamic shapes: batches are padded per batch)
    bf16_norms: bool = True  # under bf16 autocast, LayerNorm in and out in bf16 (`train.bf16_norms`)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast when the accelerator runs mixed precision, else nothing."""
        return self.accelerator.autocast()

    @property
    def quiet(self) -> bool:
        """No progress bars: asked for, or not the local main process (one bar per machine)."""
        return not (self.progress and self.accelerator.is_local_main_process)


@dataclass
class PhaseResult:
    """What a phase did. `best*` is the best epoch *seen* (by `early_stopping.metric`); the weights
    handed on are those of `kept_epoch`, evaluated as `kept`: the best epoch only when
    `early_stopping.patience` is set, else the last epoch (its weight average with `ema`)."""

    key: str
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0  # the epoch with the best watched validation metric seen
    best: dict[str, float] = field(default_factory=dict)  # that epoch's history entry
    kept_epoch: int = 0  # the epoch whose (evaluated) weights the phase hands on
    kept: dict[str, float] = field(default_factory=dict)  # that epoch's history entry
    trainable_params: int = 0
    train_seconds: float = 0.0
    train_samples: int = 0
    used_feature_cache: bool = False
    resumed_from_epoch: int | None = None

    @property
    def samples_per_second(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds else 0.0

    def entry(self, epoch: int) -> dict[str, float]:
        """The history entry of `epoch` (empty when that epoch never ran)."""
        return next((h for h in self.history if int(h["epoch"]) == epoch), {})


def inference_context(
    accelerator: Accelerator, model: BituneClassifier, eval_batch_size: int, progress: bool = True
) -> PhaseContext:
    """The context for scoring a saved model (evaluation, the gate's re-scores): inference only, so
    nothing is anchored and no pretrained weights, checkpoints or hooks are needed."""
    return PhaseContext(
        accelerator=accelerator,
        groups=resolve_layer_groups(model.backbone),
        pretrained={},
        eval_batch_size=eval_batch_size,
        progress=progress,
    )


def labels_of(rows: Rows) -> torch.Tensor:
    return torch.as_tensor([r["labels"] for r in rows], dtype=torch.long)


@torch.inference_mode()
def predict_logits(
    model: BituneClassifier, rows: Rows, ctx: PhaseContext, pad_token_id: int, progress: bool = False
) -> torch.Tensor:
    """Logits for `rows` in order; every process evaluates the whole (small) split, so no gather.

    No bar unless `progress` (and `ctx` is not quiet): a split takes seconds, and a bar after every
    epoch, for the test split and for the champion's rescoring left `evaluate:` lines all over a run's
    output; the epoch bar already shows where training is."""
    was_training = model.training
    model.eval()
    out = torch.empty(len(rows), model.num_labels)
    batches = length_grouped_batches(
        [len(r["input_ids"]) for r in rows], ctx.eval_batch_size, 0, shuffle=False
    )
    for ids in tqdm(batches, desc="evaluate", leave=False, disable=ctx.quiet or not progress):
        batch = pad_batch([rows[i] for i in ids], pad_token_id)
        with ctx.autocast():
            logits = model(
                batch["input_ids"].to(ctx.accelerator.device),
                batch["attention_mask"].to(ctx.accelerator.device),
            )
        out[ids] = logits.float().cpu()
    model.train(was_training)
    return out


def is_better(metric: str, value: float, best: float | None) -> bool:
    """Whether `value` of the watched validation metric beats `best` (loss falls, the rest rise)."""
    if best is None:
        return True
    return value < best if metric == "loss" else value > best


def load_partial(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy `state` (some of the model's parameters, by name) into the model, on its device."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device))


def weight_average(model: torch.nn.Module, ids: set[int], spec: PhaseSpec) -> WeightAverage | None:
    """The phase's weight average over every parameter it may train, when `spec.ema` asks for one."""
    if spec.ema is None:
        return None
    return WeightAverage([p for p in model.parameters() if id(p) in ids], spec.ema)


def averaged(average: WeightAverage | None) -> contextlib.AbstractContextManager[Any]:
    """The average swapped into the model for the block (evaluation, a saved state), if there is one."""
    return average.applied() if average is not None else contextlib.nullcontext()


def hand_on(
    model: BituneClassifier,
    result: PhaseResult,
    best_state: dict[str, torch.Tensor] | None,
    average: WeightAverage | None,
) -> PhaseResult:
    """End a phase: put the weights it hands on into the model and record which epoch they are.

    `best_state` is set only under early stopping (patience); then an earlier best epoch's weights
    are restored. Otherwise the last epoch's stay, or their average with `ema`. The model leaves
    frozen and in eval mode, so nothing trains by accident between phases.
    """
    result.kept_epoch = len(result.history)
    if best_state is not None and result.best_epoch != len(result.history):
        load_partial(model, best_state)
        result.kept_epoch = result.best_epoch
    elif average is not None:
        average.copy_to_model()
    result.best = result.entry(result.best_epoch)
    result.kept = result.entry(result.kept_epoch)
    model.requires_grad_(False)
    model.eval()
    return result
