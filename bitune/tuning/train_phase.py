"""One scheduled phase, start to finish: seed, build the model from the previous phase's, load the
prepared rows, train (resuming from an epoch checkpoint), measure how far the encoder moved from the
pretrained one, save the model and write the phase's `result.json`.

Values in, a `PhaseOutput` out. What the caller records while the phase trains (the tuning task: a
nested MLflow run) goes through a `PhaseRecorder` it passes in; the core never knows where it lands.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Protocol

import torch
from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from bitune.data.prepared import PreparedData, load_rows
from bitune.data.seen import texts_in
from bitune.device import make_accelerator
from bitune.forgetting import encoder_cka, load_probe_texts, probe_batches, probe_path, weight_drift
from bitune.model.classifier import (
    BituneClassifier,
    ClassifierMeta,
    load_backbone,
    load_tokenizer,
    save_classifier,
)
from bitune.model.layer_groups import LayerGroups, gradual_shortfall, resolve_layer_groups
from bitune.model.pretrained import build_model, check_strategy_fits_model
from bitune.params import Params
from bitune.tuning.checkpoint import STATE as CHECKPOINT_STATE
from bitune.tuning.checkpoint import PhaseCheckpoints
from bitune.tuning.features import feature_cache_file, features_precision
from bitune.tuning.phase import PhaseContext, PhaseData, run_phase
from bitune.tuning.phase_context import PhaseResult
from bitune.tuning.phase_names import phase_field
from bitune.tuning.phase_output import PhaseOutput, phase_dir, write_phase_output
from bitune.tuning.schedule import PhaseRun, expand_strategy

log = logging.getLogger("bitune")


class PhaseRecorder(Protocol):
    """Where a phase's progress is recorded. Called on the main process only, in the order below."""

    def start(self, run: PhaseRun, accelerator: Accelerator) -> str | None:
        """The model and data are loaded: open the record; its id is the output's `run_id`."""
        ...

    def resume(self, run: PhaseRun, checkpoints: PhaseCheckpoints) -> None:
        """Before training: a phase resuming from `checkpoints` continues the history it left there."""
        ...

    def epoch(self, run: PhaseRun, metrics: dict[str, float], epoch: int) -> None: ...

    def step(self, run: PhaseRun, metrics: dict[str, float], step: int) -> None: ...

    def training(self, device: str) -> contextlib.AbstractContextManager[object]:
        """Held while the phase trains (system metrics on a GPU)."""
        ...

    def finish(
        self,
        run: PhaseRun,
        result: PhaseResult,
        cka: float,
        drift: dict[str, float],
        wall: float,
        out_dir: Path,
    ) -> None:
        """The model is saved, its `result.json` not yet written: close the record."""
        ...


def scheduled_phase(params: Params, phase_index: int) -> PhaseRun:
    """The strategy's `phase_index`-th phase; the first checks the strategy's layers fit the model."""
    if phase_index == 0:
        check_strategy_fits_model(params)
    return expand_strategy(params.strategy)[phase_index]


def say_if_resuming(checkpoints: PhaseCheckpoints, run: PhaseRun) -> None:
    """A rerun after a crash continues from the phase's last epoch checkpoint: tell the user so."""
    try:
        epoch = int(json.loads((checkpoints.folder / CHECKPOINT_STATE).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # no checkpoint (or an unreadable one, which run_phase reports): a fresh start
    planned = f"of {run.spec.epochs}" if run.spec.epochs else f"(max_steps {run.spec.max_steps})"
    if not run.spec.epochs and not run.spec.max_steps:
        planned = "of 1"
    log.info(
        "%s: resuming from the checkpoint after epoch %d %s (%s)", run.key, epoch, planned, checkpoints.folder
    )


def measure_forgetting(
    params: Params,
    root: Path,
    model: BituneClassifier,
    tokenizer: PreTrainedTokenizerBase,
    pretrained: dict[str, torch.Tensor],
    groups: LayerGroups,
    device: torch.device,
) -> tuple[float, dict[str, float]]:
    """The encoder's CKA to the pretrained one on the probe texts, and each layer group's weight drift."""
    # transformers wraps `PreTrainedModel.to` in a decorator whose type takes no device
    reference = load_backbone(params.model).to(device)  # type: ignore[arg-type]
    probe = load_probe_texts(probe_path(params.forgetting.probe_file, root), params.forgetting.probe_rows)
    cka = encoder_cka(
        model.backbone, reference, probe_batches(tokenizer, probe, params.preprocess.max_length)
    )
    return cka, weight_drift(pretrained, model.backbone, groups)


def train_phase(
    params: Params,
    prepared: PreparedData,
    run: PhaseRun,
    previous: PhaseOutput | None,
    root: Path,
    pipeline_key: str,
    recorder: PhaseRecorder | None = None,
) -> PhaseOutput:
    """Train `run` from `previous`'s model (the pretrained one for the first phase) on this process.

    Under `accelerate launch` every process calls it; only the main process records, saves the model
    and writes `result.json`, and it clears the phase's checkpoints once that is written.
    """
    out_dir = phase_dir(root, pipeline_key, run.key)
    accelerator = make_accelerator(params.train)
    recorder = recorder if accelerator.is_main_process else None
    torch.manual_seed(params.train.seed)
    tokenizer = load_tokenizer(params.model)
    model, pretrained = build_model(params, len(prepared.labels), previous.model_dir if previous else None)
    groups = resolve_layer_groups(model.backbone)
    shortfall = gradual_shortfall(run.spec, groups, model.uses_pooler, phase_field(params.strategy, run))
    if shortfall and accelerator.is_main_process:
        log.warning(shortfall)
    data = PhaseData(
        load_rows(prepared, "train"), load_rows(prepared, "validation"), tokenizer.pad_token_id or 0
    )
    run_id = recorder.start(run, accelerator) if recorder else None

    def on_epoch(metrics: dict[str, float], epoch: int) -> None:
        if recorder:
            recorder.epoch(run, metrics, epoch)

    def on_step(metrics: dict[str, float], step: int) -> None:
        if recorder:
            recorder.step(run, metrics, step)

    feature_cache = None
    if previous is None:  # later phases start from trained weights: their features are their own
        precision = features_precision(accelerator.mixed_precision, params.train.bf16_norms)
        feature_cache = feature_cache_file(root, params, prepared.key, precision)
    checkpoints = PhaseCheckpoints(root / params.train.checkpoint_dir / pipeline_key / run.key)
    ctx = PhaseContext(
        accelerator=accelerator,
        groups=groups,
        pretrained=pretrained,
        seed=params.train.seed,
        eval_batch_size=params.train.eval_batch_size,
        checkpoints=checkpoints,
        feature_cache=feature_cache,
        on_epoch=on_epoch,
        on_step=on_step,
        compile=params.train.compile,
        bf16_norms=params.train.bf16_norms,
    )
    if accelerator.is_main_process:
        say_if_resuming(checkpoints, run)
    if recorder:
        recorder.resume(run, checkpoints)
    with recorder.training(str(accelerator.device)) if recorder else contextlib.nullcontext():
        t0 = time.perf_counter()
        result = run_phase(model, run, data, ctx)
    wall = time.perf_counter() - t0
    cka, drift = measure_forgetting(params, root, model, tokenizer, pretrained, groups, accelerator.device)

    model_dir = out_dir / "model"
    output = PhaseOutput(
        key=run.key,
        name=run.spec.name,
        model_dir=str(model_dir),
        run_id=run_id,
        best=result.best,
        cka_to_pretrained=cka,
        kept=result.kept,
        kept_epoch=result.kept_epoch,
        drift=drift,
        history=result.history,
        train_seconds=result.train_seconds,
        samples_per_s=result.samples_per_second,
    )
    if accelerator.is_main_process:
        meta = ClassifierMeta.for_training(list(prepared.labels), params.model, params.preprocess)
        # train and validation (which chose the epoch) are what the gate must not re-score it on
        seen = texts_in([prepared.split_file("train"), prepared.split_file("validation")])
        save_classifier(model.cpu(), tokenizer, meta, model_dir, seen_texts=seen)
        if recorder:
            recorder.finish(run, result, cka, drift, wall, out_dir)
        write_phase_output(out_dir, output)
        checkpoints.clear()
    return output
