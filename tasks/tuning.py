"""Stages 3-4, head- and bottom-phase tuning: one task per scheduled phase, each a nested MLflow run.

The phase itself is `bitune.tuning.train_phase`: it reads the previous phase's saved model (a path),
trains, measures how far the encoder moved from the pretrained one, and saves its own model. A phase
whose output already exists for this pipeline key is not run again, and a phase with an epoch
checkpoint resumes from it: that is how a crashed run picks up where it stopped. This task starts the
processes of a distributed phase and records the phase in MLflow (`MlflowPhaseRecorder`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

from accelerate import Accelerator
from mlflow.exceptions import MlflowException
from prefect import task

from bitune.data.prepared import PreparedData
from bitune.device import launched_distributed
from bitune.forgetting import DRIFT_PLOT, plot_drift
from bitune.params import Params, flatten
from bitune.tag_names import FEATURE_CACHE, PHASE, PIPELINE_KEY, RESUMED_FROM_EPOCH, RESUMED_FROM_RUN, ROUND
from bitune.tuning.checkpoint import STATE as CHECKPOINT_STATE
from bitune.tuning.checkpoint import PhaseCheckpoints
from bitune.tuning.phase_context import PhaseResult
from bitune.tuning.phase_names import epoch_metrics, phase_summary, step_metrics
from bitune.tuning.phase_output import PhaseOutput, phase_dir, read_phase_output, reused_phase_output
from bitune.tuning.schedule import PhaseRun
from bitune.tuning.train_phase import scheduled_phase, train_phase
from tasks import tracking
from tasks.phase_launch import run_distributed
from tasks.tracking import TrackingSettings

log = logging.getLogger("bitune")


class MlflowPhaseRecorder:
    """A phase as a nested MLflow run of the flow's parent run (`bitune.tuning.train_phase.PhaseRecorder`)."""

    def __init__(self, settings: TrackingSettings, pipeline_key: str, parent_run_id: str | None) -> None:
        self.settings = settings
        self.pipeline_key = pipeline_key
        self.parent_run_id = parent_run_id
        self.run_id: str | None = None

    def start(self, run: PhaseRun, accelerator: Accelerator) -> str | None:
        self.run_id = tracking.start_run(
            self.settings,
            run.key,
            {
                PHASE: run.spec.name,
                ROUND: str(run.round),
                PIPELINE_KEY: self.pipeline_key,
            },
            self.parent_run_id,
        )
        tracking.log_params(
            self.settings,
            self.run_id,
            {f"phase.{k}": v for k, v in flatten(run.spec.model_dump(mode="json")).items()}
            | {
                "device": str(accelerator.device),
                "precision": accelerator.mixed_precision,
                "processes": accelerator.num_processes,
            },
        )
        return self.run_id

    def resume(self, run: PhaseRun, checkpoints: PhaseCheckpoints) -> None:
        if self.run_id:
            carry_resumed_history(self.settings, self.pipeline_key, run, self.run_id, checkpoints)

    def epoch(self, run: PhaseRun, metrics: dict[str, float], epoch: int) -> None:
        tracking.log_metrics(self.settings, self.run_id, epoch_metrics(run.spec.name, metrics), step=epoch)  # type: ignore[arg-type]

    def step(self, run: PhaseRun, metrics: dict[str, float], step: int) -> None:
        named = step_metrics(run.spec.name, metrics)
        tracking.log_metrics(self.settings, self.run_id, named, step, synchronous=False)  # type: ignore[arg-type]

    @contextmanager
    def training(self, device: str) -> Iterator[None]:
        monitor = tracking.system_metrics(self.settings, self.run_id, device) if self.run_id else None
        try:
            yield
        finally:
            if monitor is not None:
                monitor.finish()

    def finish(
        self,
        run: PhaseRun,
        result: PhaseResult,
        cka: float,
        drift: dict[str, float],
        wall: float,
        out_dir: Path,
    ) -> None:
        if self.run_id is None:
            return
        tracking.log_metrics(
            self.settings, self.run_id, phase_summary(run.spec.name, result, cka, drift, wall)
        )
        # this phase's own plot: the evaluate run's plot of every phase exists only if all of them ran
        tracking.log_artifacts(
            self.settings, self.run_id, [plot_drift({run.key: drift}, out_dir / DRIFT_PLOT)]
        )
        tracking.set_tags(
            self.settings,
            self.run_id,
            {FEATURE_CACHE: str(result.used_feature_cache).lower()}
            | (  # only on a resumed phase: a "None" tag on every other run said nothing
                {RESUMED_FROM_EPOCH: str(result.resumed_from_epoch)}
                if result.resumed_from_epoch is not None
                else {}
            ),
        )
        tracking.end_run(self.settings, self.run_id)


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
        tracking.set_tags(settings, run_id, {RESUMED_FROM_RUN: earlier})


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
    """The phase reused whole, trained under `accelerate launch` (`train.processes` > 1: each process
    runs this again, in `tasks.phase_worker`), or trained here; recorded in MLflow when `settings`."""
    run = scheduled_phase(params, phase_index)
    out_dir = phase_dir(root, pipeline_key, run.key)
    reused = reused_phase_output(out_dir, run.key)
    if reused is not None:
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
        return read_phase_output(out_dir)
    recorder = MlflowPhaseRecorder(settings, pipeline_key, parent_run_id) if settings is not None else None
    return train_phase(params, prepared, run, previous, root, pipeline_key, recorder)


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
