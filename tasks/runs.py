"""The flow run's MLflow parent run: opened with everything that produced it, closed with its fate.

Also the explicit skip check: a run whose data version and params equal the last successful
run's has nothing new to learn.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from mlflow.entities import Dataset, DatasetInput, InputTag
from prefect import task
from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run

from bitune.data.prepared import PreparedData
from bitune.device import check_device
from bitune.errors import TrackingError
from bitune.forgetting import check_probe_file, probe_path
from bitune.model.pretrained import check_strategy_fits_model
from bitune.params import Params
from bitune.params.folders import check_writable_folders
from bitune.pipeline import pipeline_dir
from bitune.tag_names import CLOSED_STALE_RUNS, DATA_VERSION, MODEL_VERSION, PIPELINE_KEY, STRATEGY
from bitune.tuning.model_fit import check_params_fit_model
from tasks import tracking
from tasks.data import DataVersion, warn_remote_credentials
from tasks.phase_launch import check_launch_args
from tasks.preprocess import check_model
from tasks.tracking import TrackingSettings

log = logging.getLogger("bitune")


def preflight_fn(settings: TrackingSettings, params: Params, root: Path) -> None:
    """What the run needs besides the data, checked before the data step versions anything.

    A tracking store that is down, a model that cannot load, or a checkpoint folder or the
    experiment's artifact folder that cannot be written would otherwise fail the run only after
    data.dvc and the remote had changed (or, for MLflow, after minutes of retries). `bitune run`
    checks the params' folders too, before Prefect starts; a scheduled run has only this.
    """
    check_model(params.model)
    check_strategy_fits_model(params)  # `layers[i:j]` within the model's layers
    check_params_fit_model(params)  # an encoder; max_length within its positions; no empty phase
    check_device(params.train)  # `cuda` on a machine without one, bf16 on a GPU without it
    check_launch_args(params.train)  # as accelerate launch parses them, when phases are distributed
    check_probe_file(probe_path(params.forgetting.probe_file, root))
    check_writable_folders(params, root, tracking_server=settings.is_server)
    warn_remote_credentials(params.data)  # an s3:// remote without AWS credentials, said before the push
    tracking.check_store(settings)  # and the experiment's own artifact folder, fixed when it was created


def previous_success_fn(settings: TrackingSettings, key: str) -> str | None:
    """The run id of the last finished, registered run with this pipeline key, if any."""
    with tracking.tracking_errors(settings):
        client = settings.client()
        exp = client.get_experiment_by_name(settings.experiment)
        if exp is None:
            return None
        runs = client.search_runs(
            [exp.experiment_id],
            filter_string=f"attributes.status = 'FINISHED' and tags.`{PIPELINE_KEY}` = '{key}' "
            f"and tags.`{MODEL_VERSION}` != ''",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    if not runs:
        return None
    run_id = runs[0].info.run_id
    # said here, in the run's log: a scheduled run has no console to print the no-op's reason on
    log.info(
        "run %s already trained this data version with these params (key %s): nothing new to learn "
        "unless --force",
        run_id,
        key,
    )
    return run_id


def prefect_flow_run() -> dict[str, str]:
    """The Prefect flow run that opened the MLflow run, so a run in the MLflow UI leads to its logs and
    its summary in the Prefect UI; empty outside a flow run."""
    if flow_run.id is None:
        return {}
    return {"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": str(flow_run.name)}


def open_parent_run_fn(
    settings: TrackingSettings,
    params: Params,
    data: DataVersion,
    prepared: PreparedData,
    key: str,
    root: Path,
    resolved_params: Path,
) -> str:
    stale = tracking.close_stale_runs(settings, key)
    tags = {
        PIPELINE_KEY: key,
        STRATEGY: params.strategy.name,
        DATA_VERSION: data.md5,
        **({CLOSED_STALE_RUNS: ",".join(stale)} if stale else {}),  # an empty tag on every run
        **tracking.git_state(root),
        **prefect_flow_run(),
    }
    run_id = tracking.start_run(settings, f"{params.strategy.name}-{data.md5[:8]}", tags)
    try:
        log_run_inputs(settings, run_id, params, data, prepared, resolved_params)
    except BaseException as exc:
        # the run exists now: one that failed (or was stopped) while opening must not stay RUNNING
        status = "KILLED" if isinstance(exc, KeyboardInterrupt | TerminationSignal) else "FAILED"
        try:
            tracking.end_run(settings, run_id, status)
        except Exception:  # the store itself may be what failed: the first error is the one to report
            log.warning("could not mark MLflow run %s %s", run_id, status, exc_info=True)
        raise
    return run_id


def params_as_run(params: Params, data: DataVersion) -> Params:
    """The params with the data source the run really read, as its runs log them.

    A plain run after `--data reviews.csv --set data.text_column=review` trains on the version in data/
    (read by `text` and `label`); it logged `data.source=demo`, so the MLflow UI and `compare` said a
    demo trained it. The source and its columns go together: both are the ones read.
    """
    if data.source is None or data.source == params.data.source:
        return params
    text_column, label_column = data.columns
    used = {"source": data.source, "text_column": text_column, "label_column": label_column}
    return params.model_copy(update={"data": params.data.model_copy(update=used)})


def log_run_inputs(
    settings: TrackingSettings,
    run_id: str,
    params: Params,
    data: DataVersion,
    prepared: PreparedData,
    resolved_params: Path,
) -> None:
    """What produced the run: params, library versions, the resolved params file, the data version."""
    client = settings.client()
    params = params_as_run(params, data)
    tracking.log_params(settings, run_id, params.flat() | {"data.version": data.md5})
    tracking.set_tags(settings, run_id, tracking.library_versions())
    resolved_params.parent.mkdir(parents=True, exist_ok=True)
    resolved_params.write_text(json.dumps(params.redacted(), indent=2))
    try:
        client.log_artifact(run_id, str(resolved_params))
    except OSError as exc:  # the experiment's artifact folder, fixed when the experiment was created
        raise TrackingError(
            f"tracking: cannot write the run's artifacts to {exc.filename or 'the artifact folder'} "
            f"({exc.strerror or exc}); experiment {settings.experiment!r} keeps them where it was created: "
            "make that folder writable, or set tracking.experiment to a new experiment name"
        ) from None
    source = json.dumps({"dvc_remote": data.remote, "md5": data.md5, "path": "data"})
    dataset = Dataset(
        name="data", digest=data.md5, source_type="dvc", source=source, profile=json.dumps(data.stats)
    )
    client.log_inputs(
        run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])]
    )
    if data.warnings:
        client.log_text(run_id, "\n".join(data.warnings), "data_warnings.txt")
    data_metrics = {f"data/{split}/rows": float(n) for split, n in prepared.sizes.items()}
    data_metrics |= {f"data/{split}/truncation_rate": rate for split, rate in prepared.truncation.items()}
    tracking.log_metrics(settings, run_id, data_metrics)


@task(name="preflight", retries=0)
def preflight(settings: TrackingSettings, params: Params, root: str) -> None:
    preflight_fn(settings, params, Path(root))


@task(name="find-previous-run")
def previous_success(settings: TrackingSettings, key: str) -> str | None:
    return previous_success_fn(settings, key)


@task(name="open-mlflow-run")
def open_parent_run(
    settings: TrackingSettings, params: Params, data: DataVersion, prepared: PreparedData, key: str, root: str
) -> str:
    root_path = Path(root)
    resolved = pipeline_dir(root_path, key) / "params.resolved.json"
    return open_parent_run_fn(settings, params, data, prepared, key, root_path, resolved)


def close_parent_run_fn(settings: TrackingSettings, run_id: str, status: str) -> None:
    """End the parent run; on failure or kill, nested runs still RUNNING end with the same status."""
    if status != "FINISHED":
        client = settings.client()
        exp = client.get_run(run_id).info.experiment_id
        for child in client.search_runs(
            [exp], filter_string=f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'RUNNING'"
        ):
            tracking.end_run(settings, child.info.run_id, status)
    tracking.end_run(settings, run_id, status)


@task(name="close-mlflow-run")
def close_parent_run(settings: TrackingSettings, run_id: str, status: str) -> None:
    close_parent_run_fn(settings, run_id, status)


@task(name="reset-pipeline")
def reset_pipeline(root: str, key: str, checkpoint_dir: str) -> None:
    """--force: forget finished phases and checkpoints of this key so every phase trains again."""
    shutil.rmtree(pipeline_dir(Path(root), key), ignore_errors=True)
    shutil.rmtree(Path(root) / checkpoint_dir / key, ignore_errors=True)
