"""Stages 3-4, head- and bottom-phase tuning: one task per scheduled phase, each a nested MLflow run.

A phase reads the previous phase's saved model (a path), trains, measures how far the encoder moved
from the pretrained one, and saves its own model. A phase whose output already exists for this
pipeline key is not run again, and a phase with an epoch checkpoint resumes from it: that is how a
crashed run picks up where it stopped.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from mlflow.exceptions import MlflowException
from prefect import task

from bitune.data.prepared import PreparedData, load_rows
from bitune.data.seen import texts_in
from bitune.device import launched_distributed, make_accelerator
from bitune.forgetting import (
    DRIFT_PLOT,
    encoder_cka,
    load_probe_texts,
    plot_drift,
    probe_batches,
    probe_path,
    weight_drift,
)
from bitune.model.classifier import ClassifierMeta, load_backbone, load_tokenizer, save_classifier
from bitune.model.layer_groups import gradual_shortfall, resolve_layer_groups
from bitune.model.pretrained import build_model, check_strategy_fits_model
from bitune.params import Params, flatten
from bitune.pipeline import pipeline_dir
from bitune.tuning.checkpoint import STATE as CHECKPOINT_STATE
from bitune.tuning.checkpoint import PhaseCheckpoints
from bitune.tuning.features import feature_cache_file
from bitune.tuning.phase import PhaseContext, PhaseData, run_phase
from bitune.tuning.phase_names import epoch_metrics, phase_field, phase_summary, step_metrics
from bitune.tuning.schedule import PhaseRun, expand_strategy
from tasks import tracking
from tasks.phase_launch import run_distributed
from tasks.tracking import TrackingSettings

log = logging.getLogger("bitune")
RESULT = "result.json"


@dataclass(frozen=True)
class PhaseOutput:
    key: str
    name: str
    model_dir: str
    run_id: str | None
    best: dict[str, float]  # the best epoch seen (by early_stopping.metric)
    cka_to_pretrained: float
    kept: dict[str, float] = field(default_factory=dict)  # the epoch whose weights were handed on
    kept_epoch: int = 0
    drift: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    samples_per_s: float = 0.0
    resumed: bool = False

    def summary_row(self) -> dict[str, object]:
        """What the run's summary shows of this phase: the handed-on epoch's validation scores."""
        scores = {k: v for k, v in (self.kept or self.best).items() if k.startswith("val_")}
        return {"phase": self.key, **scores, "cka": self.cka_to_pretrained, "seconds": self.train_seconds}


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


def carry_reused_run(
    output: PhaseOutput, settings: TrackingSettings | None, parent_run_id: str | None, out_dir: Path
) -> PhaseOutput:
    """A phase reused whole gets a run under this parent too, copied from the run that trained it
    (tag `bitune.reused_from_run`): the run of the version this parent registers shows every phase."""
    if settings is None or not parent_run_id or not output.run_id:
        return output
    try:
        run_id = tracking.copy_phase_run(
            settings, output.run_id, output.key, parent_run_id, [out_dir / DRIFT_PLOT]
        )
    except MlflowException as exc:  # that run is gone (another store, deleted): the phase is still good
        log.warning("%s: could not copy its MLflow run %s into this run (%s)", output.key, output.run_id, exc)
        return output
    return replace(output, run_id=run_id)


def carry_resumed_history(
    settings: TrackingSettings, pipeline_key: str, run: PhaseRun, run_id: str, checkpoints: PhaseCheckpoints
) -> None:
    """A phase resumed from a checkpoint continues the history of the run it started under.

    Each epoch's metrics come from the checkpoint, which holds them all: the run killed after saving
    an epoch's checkpoint but before logging that epoch had never logged it. The per-step metrics,
    which only MLflow holds, are copied from that run.
    """
    try:
        history = json.loads((checkpoints.folder / CHECKPOINT_STATE).read_text())["history"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no checkpoint (or an unreadable one, which run_phase reports): a fresh start
    logged: set[str] = set()
    for entry in history:
        named = epoch_metrics(run.spec.name, {k: v for k, v in entry.items() if k != "epoch"})
        tracking.log_metrics(settings, run_id, named, step=int(entry["epoch"]))
        logged |= set(named)
    earlier = tracking.earlier_phase_run(settings, pipeline_key, run.key, run_id)
    if earlier is not None:
        tracking.copy_metric_history(settings, earlier, run_id, skip=frozenset(logged))
        tracking.set_tags(settings, run_id, {"bitune.resumed_from_run": earlier})


def tune_phase_fn(
    params: Params,
    prepared: PreparedData,
    phase_index: int,
    previous: PhaseOutput | None,
    root: Path,
    pipeline_key: str,
    settings: TrackingSettings | None,
    parent_run_id: str | None,
) -> PhaseOutput:
    if phase_index == 0:
        check_strategy_fits_model(params)
    run: PhaseRun = expand_strategy(params.strategy)[phase_index]
    out_dir = pipeline_dir(root, pipeline_key) / run.key
    if (out_dir / RESULT).exists():
        log.info("%s: already trained for this data and params; reusing it whole (%s)", run.key, out_dir)
        reused = PhaseOutput(**{**json.loads((out_dir / RESULT).read_text()), "resumed": True})
        return carry_reused_run(reused, settings, parent_run_id, out_dir)
    if params.train.processes > 1 and not launched_distributed():
        job = {
            "params": params.model_dump(mode="json"),
            "prepared": asdict(prepared),
            "phase_index": phase_index,
            "previous": asdict(previous) if previous else None,
            "root": str(root),
            "pipeline_key": pipeline_key,
            "settings": asdict(settings) if settings else None,
            "parent_run_id": parent_run_id,
        }
        run_distributed(
            job,
            out_dir.with_name(f"{run.key}.job.json"),
            params.train.processes,
            params.train.launch_args,
            root,
        )
        return PhaseOutput(**json.loads((out_dir / RESULT).read_text()))

    accelerator = make_accelerator(params.train)
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
    main = accelerator.is_main_process and settings is not None
    run_id = None
    if main:
        assert settings is not None
        run_id = tracking.start_run(
            settings,
            run.key,
            {
                "bitune.phase": run.spec.name,
                "bitune.round": str(run.round),
                "bitune.pipeline_key": pipeline_key,
            },
            parent_run_id,
        )
        tracking.log_params(
            settings,
            run_id,
            {f"phase.{k}": v for k, v in flatten(run.spec.model_dump(mode="json")).items()}
            | {
                "device": str(accelerator.device),
                "precision": accelerator.mixed_precision,
                "processes": accelerator.num_processes,
            },
        )

    def on_epoch(metrics: dict[str, float], epoch: int) -> None:
        if main:
            tracking.log_metrics(settings, run_id, epoch_metrics(run.spec.name, metrics), step=epoch)  # type: ignore[arg-type]

    def on_step(metrics: dict[str, float], step: int) -> None:
        if main:
            named = step_metrics(run.spec.name, metrics)
            tracking.log_metrics(settings, run_id, named, step, synchronous=False)  # type: ignore[arg-type]

    feature_cache = None
    if previous is None:  # later phases start from trained weights: their features are their own
        feature_cache = feature_cache_file(root, params, prepared.key, accelerator.mixed_precision)
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
    )
    if accelerator.is_main_process:
        say_if_resuming(checkpoints, run)
    if main and run_id:
        carry_resumed_history(settings, pipeline_key, run, run_id, checkpoints)  # type: ignore[arg-type]
    monitor = tracking.system_metrics(settings, run_id, str(accelerator.device)) if main and run_id else None  # type: ignore[arg-type]
    t0 = time.perf_counter()
    try:
        result = run_phase(model, run, data, ctx)
    finally:
        if monitor is not None:
            monitor.finish()
    wall = time.perf_counter() - t0

    reference = load_backbone(params.model).to(accelerator.device)
    probe = load_probe_texts(probe_path(params.forgetting.probe_file, root), params.forgetting.probe_rows)
    cka = encoder_cka(
        model.backbone, reference, probe_batches(tokenizer, probe, params.preprocess.max_length)
    )
    drift = weight_drift(pretrained, model.backbone, groups)
    del reference

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
        if main and settings is not None and run_id is not None:
            summary = phase_summary(run.spec.name, result, cka, drift, wall)
            tracking.log_metrics(settings, run_id, summary)
            # this phase's own plot: the evaluate run's plot of every phase exists only if all of them ran
            tracking.log_artifacts(settings, run_id, [plot_drift({run.key: drift}, out_dir / DRIFT_PLOT)])
            tracking.set_tags(
                settings,
                run_id,
                {"bitune.feature_cache": str(result.used_feature_cache).lower()}
                | (  # only on a resumed phase: a "None" tag on every other run said nothing
                    {"bitune.resumed_from_epoch": str(result.resumed_from_epoch)}
                    if result.resumed_from_epoch is not None
                    else {}
                ),
            )
            tracking.end_run(settings, run_id)
        (out_dir / RESULT).write_text(json.dumps(asdict(output), indent=2))
        checkpoints.clear()
    return output


@task(name="tune-phase")
def tune_phase(
    params: Params,
    prepared: PreparedData,
    phase_index: int,
    previous: PhaseOutput | None,
    root: str,
    pipeline_key: str,
    settings: TrackingSettings | None,
    parent_run_id: str | None,
) -> PhaseOutput:
    return tune_phase_fn(
        params, prepared, phase_index, previous, Path(root), pipeline_key, settings, parent_run_id
    )
