"""MLflow tracking through explicit run ids.

MLflow's active run is per thread and Prefect may run a task in a worker thread, so nothing here
relies on ambient state: every call names its run. The settings object is built once, inside the
flow, from params and environment; nothing happens at import.
"""

from __future__ import annotations

import getpass
import os
import re
import signal
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient
from mlflow.utils.file_utils import local_file_uri_to_path

from bitune.errors import BituneError, TrackingError, first_line
from bitune.params import TrackingParams, redact
from bitune.params.folders import check_writable
from bitune.tag_names import PIPELINE, PIPELINE_KEY, PREFIX, REUSED_FROM_RUN

SOURCE_NAME = "bitune retrain"  # the flow, whether `bitune run` or a Prefect worker started it
MAX_BATCH = 900
PREFLIGHT_TIMEOUT_S = 10


def is_server_uri(uri: str) -> bool:
    """A tracking URI that names an MLflow server rather than a local store."""
    return uri.startswith(("http://", "https://"))


@dataclass(frozen=True)
class TrackingSettings:
    uri: str
    experiment: str
    artifact_location: str | None
    uri_setting: str = "tracking.uri"  # where the uri came from, for error messages

    @classmethod
    def from_params(cls, tracking: TrackingParams, root: Path) -> TrackingSettings:
        """Env `MLFLOW_TRACKING_URI` wins; relative SQLite paths and artifact folders anchor at `root`."""
        from_env = os.environ.get("MLFLOW_TRACKING_URI")
        uri = from_env or tracking.uri
        if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
            uri = f"sqlite:///{(root / uri.removeprefix('sqlite:///')).resolve()}"
        artifacts = tracking.artifact_location
        if artifacts and "://" not in artifacts and not is_server_uri(uri):
            artifacts = (root / artifacts).resolve().as_uri()
        setting = "MLFLOW_TRACKING_URI" if from_env else "tracking.uri"
        # MLflow prints "🏃 View run <name> at: <tracking URI>/#/..." as each run against a server ends:
        # with `user:password@` in the URI, the password in clear on a terminal. bitune prints its own
        # links, without. Set here, where every stage gets its store's address, not at import.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        return cls(uri=uri, experiment=tracking.experiment, artifact_location=artifacts, uri_setting=setting)

    @property
    def is_server(self) -> bool:
        """An MLflow tracking server (which keeps artifacts where it is told), not a local store."""
        return is_server_uri(self.uri)

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)


@contextmanager
def tracking_errors(settings: TrackingSettings) -> Iterator[None]:
    """MLflow failures as one-line TrackingErrors naming the setting and the fix."""
    try:
        yield
    except BituneError:
        raise
    except MlflowException as exc:
        damaged = damaged_store(settings, exc)  # MLflow wraps some of SQLite's errors in its own
        if damaged is not None:
            raise damaged from None
        first = first_line(exc)
        if "failed with exception" in first or "Max retries exceeded" in first:  # no HTTP answer at all
            raise _unreachable(settings, "no answer") from None
        raise TrackingError(
            f"{settings.uri_setting}: MLflow at {_shown(settings)} refused: {first[:160]}; check the "
            "server, its credentials (MLFLOW_TRACKING_USERNAME/PASSWORD) or the URI"
        ) from None
    except Exception as exc:  # connection errors come as requests/sqlalchemy types
        damaged = damaged_store(settings, exc)
        if damaged is not None:
            raise damaged from None
        raise _unreachable(settings, type(exc).__name__) from None


# SQLite's own words for a file that is not (or no longer) a database: not a connection problem
_DAMAGED_SQLITE = re.compile(r"file is not a database|database disk image is malformed|file is encrypted")


def damaged_store(settings: TrackingSettings, exc: BaseException) -> TrackingError | None:
    """The one-line error for `exc` when it is SQLite saying the store's file is not a database (any
    query may be the first to hit a damaged page); None for anything else."""
    damaged = _DAMAGED_SQLITE.search(str(exc)) if settings.uri.startswith("sqlite") else None
    if damaged is None:
        return None
    return TrackingError(
        f"{settings.uri_setting}: the MLflow store {_shown(settings)} is damaged ({damaged.group(0)}); "
        "restore the file from a backup, or move it aside to start an empty store"
    )


def _shown(settings: TrackingSettings) -> str:
    return redact(settings.uri_setting, settings.uri)  # `user:pass@` never reaches the terminal or log


def _unreachable(settings: TrackingSettings, why: str) -> TrackingError:
    fix = (
        "start the server or point tracking.uri / MLFLOW_TRACKING_URI at a running one"
        if settings.is_server
        else "check that its folder exists and is writable, or point tracking.uri / MLFLOW_TRACKING_URI "
        "elsewhere"
    )
    return TrackingError(f"{settings.uri_setting}: cannot reach MLflow at {_shown(settings)} ({why}); {fix}")


@contextmanager
def _one_try(timeout_s: int) -> Iterator[None]:
    """MLflow's HTTP requests without retries, for checks that must fail in seconds; restored after."""
    limits = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    saved = {name: os.environ.get(name) for name in limits}
    os.environ.update(limits)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check_reachable(settings: TrackingSettings, timeout_s: int = PREFLIGHT_TIMEOUT_S) -> None:
    """One request without retries: a store that is down fails in seconds, not after MLflow's minutes
    of retries (7 by default, backing off), and before the data step has versioned anything."""
    if is_database_server(settings.uri):
        check_database(settings, timeout_s)
    with _one_try(timeout_s), tracking_errors(settings):
        settings.client().search_experiments(max_results=1)


def is_database_server(uri: str) -> bool:
    """A SQLAlchemy URL of a database server (postgresql, mysql, mssql), not a file, SQLite or HTTP."""
    scheme = urllib.parse.urlsplit(uri).scheme.split("+")[0]
    return scheme in ("postgresql", "postgres", "mysql", "mssql")


def check_database(settings: TrackingSettings, timeout_s: int) -> None:
    """One connection with a timeout, before MLflow's: MLflow retries creating its engine for about
    100 s, then said to check a folder. A wrong password or a server that is down is said in seconds,
    with the driver's own reason (its message names host, port and user, never the password)."""
    import sqlalchemy

    dialect = urllib.parse.urlsplit(settings.uri).scheme.split("+")[0]
    timeout = {"connect_timeout": timeout_s} if dialect in ("postgresql", "postgres", "mysql") else {}
    try:
        engine = sqlalchemy.create_engine(settings.uri, connect_args=timeout)
    except (sqlalchemy.exc.ArgumentError, ImportError) as exc:  # a malformed URL, a missing driver
        raise TrackingError(
            f"{settings.uri_setting}: cannot use {_shown(settings)} as a database URL ({exc}); check its "
            "form, e.g. postgresql://user@host:5432/mlflow, and that its driver is installed"
        ) from None
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as exc:
        why = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
        raise TrackingError(
            f"{settings.uri_setting}: cannot connect to the database at {_shown(settings)} ({why}); check "
            "the user and password, and that the database server is running and reachable"
        ) from None
    finally:
        engine.dispose()


def check_store(settings: TrackingSettings) -> None:
    """The store answers and the experiment's artifact folder can be written: a run's preflight.

    A SQLite store that does not exist yet is not opened (opening creates it: a refused run would
    leave a new project an mlflow.db); only its folder is checked, as one MLflow can create and write
    (a file where that folder should be failed the run after the data step had versioned new data).
    """
    if (
        settings.uri.startswith("sqlite:///")
        and not (store := Path(settings.uri.removeprefix("sqlite:///"))).exists()
    ):
        key = settings.uri_setting
        check_writable(key, store.parent, fix=f"point {key} at a SQLite file in a writable folder")
        return
    check_reachable(settings)
    check_artifact_folder(settings)


def check_artifact_folder(settings: TrackingSettings, timeout_s: int = PREFLIGHT_TIMEOUT_S) -> None:
    """The experiment's artifact folder, when it is local, can be created and written; creates nothing.

    An experiment keeps the artifact location it was created with, whatever tracking.artifact_location
    says now, so the CLI's check of that key does not cover it: a folder since replaced by a file
    failed the run at its first artifact, after the data step had versioned new data. Object stores
    and a server's proxied artifacts (s3://, http(s)://, mlflow-artifacts:) are the server's business.
    """
    if settings.uri.startswith("sqlite:///"):
        store = Path(settings.uri.removeprefix("sqlite:///"))
        if not store.is_file() or store.stat().st_size == 0:
            return  # no store yet, so no experiment: opening it here would create it
    with _one_try(timeout_s), tracking_errors(settings):
        found = settings.client().get_experiment_by_name(settings.experiment)
    if found is None or not found.artifact_location:
        return  # this run creates it, at tracking.artifact_location, which the folder checks cover
    location = found.artifact_location
    scheme = urllib.parse.urlparse(location).scheme
    if scheme not in ("", "file"):
        return
    folder = Path(local_file_uri_to_path(location))
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # nothing is created: the first ancestor that exists decides
    if not existing.is_dir():
        why = f"{existing} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = f"no permission to write in {existing}"
    else:
        return
    raise TrackingError(
        f"tracking.experiment: experiment {settings.experiment!r} keeps its artifacts in {folder}, where "
        f"they cannot be written ({why}); make that folder writable, or set tracking.experiment to a "
        "new experiment name"
    )


def experiment_id(settings: TrackingSettings) -> str:
    with tracking_errors(settings):
        client = settings.client()
        found = client.get_experiment_by_name(settings.experiment)
        if found is not None:
            return found.experiment_id
        location = None if settings.is_server else settings.artifact_location
        return client.create_experiment(settings.experiment, artifact_location=location)


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGTERM and SIGINT until an MLflow write has committed, then deliver them.

    A signal handler raises in the middle of whatever runs: inside a SQLite commit it leaves the
    store locked for the rest of the process, so the run could no longer be marked KILLED. Handlers
    only run in the main thread, so other threads (MLflow's async logging) need nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {
        signum: signal.signal(signum, lambda number, _frame: received.append(number))
        for signum in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        for number in received:
            signal.raise_signal(number)  # the original handler runs now, outside the write


def start_run(
    settings: TrackingSettings, name: str, tags: dict[str, str], parent_run_id: str | None = None
) -> str:
    """A run with who and what started it, as MLflow's fluent `start_run` records them: the client API
    records neither, so the UI's User column read `unknown` and its Source column stayed empty."""
    all_tags = {PIPELINE: "retrain", **source_tags(), **tags}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = settings.client().create_run(experiment_id(settings), run_name=name, tags=all_tags)
    return run.info.run_id


def source_tags() -> dict[str, str]:
    """MLflow's system tags for the user and the source of a run (`mlflow.utils.mlflow_tags`)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no passwd entry and no USER variable
        user = "unknown"
    return {"mlflow.user": user, "mlflow.source.type": "LOCAL", "mlflow.source.name": SOURCE_NAME}


def end_run(settings: TrackingSettings, run_id: str, status: str = "FINISHED") -> None:
    mlflow.flush_async_logging()  # step metrics are logged asynchronously; land them first
    with signals_held():
        settings.client().set_terminated(run_id, status=status)


def log_params(settings: TrackingSettings, run_id: str, params: Mapping[str, object]) -> None:
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    with signals_held():
        for i in range(0, len(items), 100):
            settings.client().log_batch(run_id, params=items[i : i + 100])


def log_metrics(
    settings: TrackingSettings,
    run_id: str,
    metrics: dict[str, float],
    step: int = 0,
    synchronous: bool = True,
    model_id: str | None = None,
) -> None:
    """One batched call; `synchronous=False` (per-step metrics) queues it so training never waits.
    `model_id`: the metrics belong to that logged model too, whose page shows them."""
    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step, model_id=model_id) for k, v in metrics.items()]
    with signals_held():
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
    with signals_held():
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


# what DVC writes as the data step versions data: a run's own bookkeeping, not an uncommitted edit
DVC_BOOKKEEPING = (":(exclude)*.dvc", ":(exclude).dvc", ":(exclude).dvcignore", ":(exclude).gitignore")


def git_state(root: Path) -> dict[str, str]:
    """Commit and dirty flag of the project, when it is a git checkout.

    Dirty means a tracked file differs from the commit, apart from DVC's own files: the data step runs
    before the run opens and rewrites data.dvc (and `dvc init` stages .dvc/), so counting them marked
    every run of a new data version, and every first run, dirty.
    """

    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {"git.commit": "none"}
    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".", *DVC_BOOKKEEPING))
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
        filter_string=f"attributes.status = 'RUNNING' and tags.`{PIPELINE_KEY}` = '{pipeline_key}'",
    )
    for run in stale:
        client.set_terminated(run.info.run_id, status=RunStatus.to_string(RunStatus.KILLED))
    return [r.info.run_id for r in stale]


def earlier_phase_run(
    settings: TrackingSettings, pipeline_key: str, phase_key: str, current: str
) -> str | None:
    """The latest other run of this phase of this pipeline: the one a resumed phase continues."""
    client = settings.client()
    exp = client.get_experiment_by_name(settings.experiment)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`{PIPELINE_KEY}` = '{pipeline_key}' and attributes.run_name = '{phase_key}'",
        order_by=["attributes.start_time DESC"],
        max_results=5,
    )
    return next((r.info.run_id for r in runs if r.info.run_id != current), None)


def copy_metric_history(
    settings: TrackingSettings, source_run_id: str, target_run_id: str, skip: frozenset[str] = frozenset()
) -> None:
    """Every metric `source_run_id` logged (but those in `skip`), at its own steps and times, into
    `target_run_id`.

    A run resumed after a crash opens a new parent run; without this, the epochs trained before the
    crash (and a phase reused whole) stayed under the killed parent, and the run of the registered
    version showed half its training.
    """
    client = settings.client()
    history = [
        Metric(m.key, m.value, m.timestamp, m.step)
        for key in client.get_run(source_run_id).data.metrics
        if key not in skip
        for m in client.get_metric_history(source_run_id, key)
    ]
    with signals_held():
        for start in range(0, len(history), MAX_BATCH):
            client.log_batch(target_run_id, metrics=history[start : start + MAX_BATCH])


def copy_phase_run(
    settings: TrackingSettings, source_run_id: str, name: str, parent_run_id: str, artifacts: Iterable[Path]
) -> str:
    """A finished child of `parent_run_id` holding what the phase run `source_run_id` logged: params,
    bitune tags, metric history, and `artifacts` (files kept with the phase's output)."""
    client = settings.client()
    source = client.get_run(source_run_id)
    tags = {k: v for k, v in source.data.tags.items() if k.startswith(PREFIX)}
    run_id = start_run(settings, name, tags | {REUSED_FROM_RUN: source_run_id}, parent_run_id)
    try:
        log_params(settings, run_id, dict(source.data.params))
        copy_metric_history(settings, source_run_id, run_id)
        log_artifacts(settings, run_id, [p for p in artifacts if p.exists()])
    except BaseException:
        client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FAILED))
        raise
    end_run(settings, run_id)
    return run_id
