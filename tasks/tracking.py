"""MLflow tracking through explicit run ids.

MLflow's active run is per thread and Prefect may run a task in a worker thread, so nothing here
relies on ambient state: every call names its run. The settings object is built once, inside the
flow, from params and environment; nothing happens at import.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient

from bitune.errors import TrackingError
from bitune.params import TrackingParams

PIPELINE_TAG = "bitune.pipeline"
MAX_BATCH = 900


@dataclass(frozen=True)
class TrackingSettings:
    uri: str
    experiment: str
    artifact_location: str | None

    @classmethod
    def from_params(cls, tracking: TrackingParams, root: Path) -> TrackingSettings:
        """Env `MLFLOW_TRACKING_URI` wins; relative SQLite paths and artifact folders anchor at `root`."""
        uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking.uri
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            uri = f"sqlite:///{(root / uri.removeprefix('sqlite:///')).resolve()}"
        artifacts = tracking.artifact_location
        if artifacts and "://" not in artifacts and not uri.startswith("http"):
            artifacts = (root / artifacts).resolve().as_uri()
        return cls(uri=uri, experiment=tracking.experiment, artifact_location=artifacts)

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)


def experiment_id(settings: TrackingSettings) -> str:
    client = settings.client()
    try:
        found = client.get_experiment_by_name(settings.experiment)
        if found is not None:
            return found.experiment_id
        location = None if settings.uri.startswith("http") else settings.artifact_location
        return client.create_experiment(settings.experiment, artifact_location=location)
    except MlflowException as exc:
        raise TrackingError(
            f"tracking.uri: MLflow at {settings.uri} refused: {str(exc).splitlines()[0][:160]}"
        ) from None
    except Exception as exc:  # connection errors come as requests/sqlalchemy types
        raise TrackingError(
            f"tracking.uri: cannot reach MLflow at {settings.uri} ({type(exc).__name__}); start the server "
            "or set tracking.uri / MLFLOW_TRACKING_URI"
        ) from None


def start_run(
    settings: TrackingSettings, name: str, tags: dict[str, str], parent_run_id: str | None = None
) -> str:
    all_tags = {PIPELINE_TAG: "retrain", **tags}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = settings.client().create_run(experiment_id(settings), run_name=name, tags=all_tags)
    return run.info.run_id


def end_run(settings: TrackingSettings, run_id: str, status: str = "FINISHED") -> None:
    mlflow.flush_async_logging()  # step metrics are logged asynchronously; land them first
    settings.client().set_terminated(run_id, status=status)


def log_params(settings: TrackingSettings, run_id: str, params: Mapping[str, object]) -> None:
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        settings.client().log_batch(run_id, params=items[i : i + 100])


def log_metrics(
    settings: TrackingSettings,
    run_id: str,
    metrics: dict[str, float],
    step: int = 0,
    synchronous: bool = True,
) -> None:
    """One batched call; `synchronous=False` (per-step metrics) queues it so training never waits."""
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    for i in range(0, len(items), MAX_BATCH):
        settings.client().log_batch(run_id, metrics=items[i : i + MAX_BATCH], synchronous=synchronous)


def system_metrics(settings: TrackingSettings, run_id: str, device: str) -> SystemMetricsMonitor | None:
    """CPU/GPU utilisation and memory sampled into the run while a GPU stage trains."""
    if not device.startswith("cuda"):
        return None
    monitor = SystemMetricsMonitor(run_id, sampling_interval=5, tracking_uri=settings.uri)
    monitor.start()
    return monitor


def set_tags(settings: TrackingSettings, run_id: str, tags: dict[str, str]) -> None:
    settings.client().log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_artifacts(
    settings: TrackingSettings, run_id: str, paths: Iterable[Path], folder: str | None = None
) -> None:
    client = settings.client()
    for path in paths:
        if path.is_dir():
            client.log_artifacts(run_id, str(path), folder)
        else:
            client.log_artifact(run_id, str(path), folder)


def git_state(root: Path) -> dict[str, str]:
    """Commit and dirty flag of the project, when it is a git checkout."""

    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {"git.commit": "none"}
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return {"git.commit": commit, "git.dirty": str(dirty).lower(), "mlflow.source.git.commit": commit}


def library_versions() -> dict[str, str]:
    from importlib.metadata import version

    names = [
        "bitune",
        "torch",
        "transformers",
        "datasets",
        "accelerate",
        "prefect",
        "mlflow",
        "dvc",
        "pandas",
    ]
    out = {}
    for name in names:
        try:
            out[f"version.{name}"] = version(name)
        except Exception:
            out[f"version.{name}"] = "missing"
    return out


def close_stale_runs(settings: TrackingSettings, pipeline_key: str) -> list[str]:
    """Runs of this pipeline left RUNNING by a killed process: mark them KILLED; return their ids."""
    client = settings.client()
    exp = client.get_experiment_by_name(settings.experiment)
    if exp is None:
        return []
    stale = client.search_runs(
        [exp.experiment_id],
        filter_string=f"attributes.status = 'RUNNING' and tags.`bitune.pipeline_key` = '{pipeline_key}'",
    )
    for run in stale:
        client.set_terminated(run.info.run_id, status=RunStatus.to_string(RunStatus.KILLED))
    return [r.info.run_id for r in stale]
