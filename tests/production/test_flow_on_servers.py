"""The real retrain flow against the production stores, driven by the CLI as a user runs it.

`bitune run --params params/production.yaml` with the production environment: MLflow on PostgreSQL
behind basic-auth with artifacts proxied to S3 (as docker/compose.yaml runs it), Prefect on
PostgreSQL, and the DVC remote in the same S3 (moto). Only the data source, the bucket and the tiny
model are overridden.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .servers import REPO, VENV_BIN, MlflowAuthServer, S3Server

MODEL_NAME = "bitune-classifier"
URL_WITH_PASSWORD = re.compile(r"://[^/@\s:]+:[^/@\s]+@")


@pytest.fixture
def mlflow_client(mlflow_compose_server: MlflowAuthServer, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", mlflow_compose_server.admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", mlflow_compose_server.admin[1])
    return MlflowClient(tracking_uri=mlflow_compose_server.url, registry_uri=mlflow_compose_server.url)


def test_production_params_differ_from_the_defaults_only_in_where_things_are_stored() -> None:
    """params/production.yaml must not drift from params/default.yaml in what trains the model."""
    from bitune.params import flatten, load_params

    production = flatten(load_params(REPO / "params" / "production.yaml").model_dump(mode="json"))
    default = flatten(load_params(REPO / "params" / "default.yaml").model_dump(mode="json"))
    differing = {k for k in production.keys() | default.keys() if production.get(k) != default.get(k)}
    # and in how long a scheduled run may take: an operational limit, left out of Params.digest too
    assert differing == {
        "data.source",
        "data.remote",
        "tracking.uri",
        "tracking.artifact_location",
        "train.timeout_minutes",
    }
    assert production["data.remote"].startswith("s3://")
    assert not URL_WITH_PASSWORD.search(json.dumps(production)), "a credential in params/production.yaml"


def _champion_run(client: Any) -> tuple[Any, Any]:
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    return champion, client.get_run(champion.run_id)


@pytest.mark.production
def test_mlflow_server_holds_parent_and_nested_runs_and_the_champion(
    production_run: dict[str, Any], mlflow_client: Any, mlflow_compose_server: MlflowAuthServer
) -> None:
    assert "promoted to champion" in production_run["stdout"]
    # MLflow's own "🏃 View run … at: URL" lines print the tracking URI as given, password and all
    assert "View run" not in production_run["stdout"] + production_run["stderr"]
    champion, parent = _champion_run(mlflow_client)
    assert str(champion.version) == "1"
    assert parent.info.status == "FINISHED"
    assert parent.data.params["data.remote"] == production_run["remote"]
    assert parent.data.params["tracking.uri"] == "http://mlflow:5000"  # the file's value; the env won
    experiment = mlflow_client.get_experiment(parent.info.experiment_id)
    assert experiment.name == "bitune"
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), (
        "artifacts must go through the server"
    )

    children = mlflow_client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    assert sorted(r.info.run_name for r in children) == ["bottom", "evaluate", "head"]
    assert all(r.info.status == "FINISHED" for r in children)
    evaluate = next(r for r in children if r.info.run_name == "evaluate")
    assert 0 <= evaluate.data.metrics["test/accuracy"] <= 1
    # No credential reached the tracking server.
    password = mlflow_compose_server.admin[1]
    for run in [parent, *children]:
        assert not [k for k, v in run.data.params.items() if password in v], run.info.run_name


@pytest.mark.production
def test_model_artifacts_are_in_the_s3_bucket_and_the_champion_serves(
    production_run: dict[str, Any], mlflow_client: Any, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.pyfunc
    import pandas as pd

    champion, parent = _champion_run(mlflow_client)
    # a logged model of the parent run: its files under the experiment's `models/<model_id>/artifacts/`
    assert champion.source.startswith("models:/m-"), champion.source
    model_id = champion.source.removeprefix("models:/")
    assert mlflow_client.get_logged_model(model_id).source_run_id == parent.info.run_id
    prefix = f"mlflow/{parent.info.experiment_id}/models/{model_id}/artifacts/"
    keys = [k.removeprefix(prefix) for k in s3_server.keys(prefix)]
    assert "MLmodel" in keys, keys
    assert [k for k in keys if k.startswith("artifacts/") and k.endswith(".safetensors")], keys
    evaluation = [k for k in s3_server.keys("mlflow/") if k.endswith("/artifacts/evaluation_report.md")]
    assert evaluation, "the evaluate run's report is not in the bucket"

    # The champion loads from the registry through the server (no S3 credentials here) and predicts.
    for key in [k for k in os.environ if k.startswith("AWS_") or k == "MLFLOW_S3_ENDPOINT_URL"]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_client.tracking_uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", mlflow_client.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    predicted = model.predict(pd.DataFrame({"text": ["a great film", "a dull film"]}))
    assert list(predicted.columns[:2]) == ["label", "score"] and len(predicted) == 2


@pytest.mark.production
def test_prefect_server_recorded_the_completed_flow_run_and_its_tasks(
    production_run: dict[str, Any], prefect_server: str
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = str(production_run["root"])
    with temporary_settings({PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])), limit=200)
        ours = [r for r in runs if r.parameters.get("project_dir") == root]
        assert len(ours) == 1, [(r.name, r.parameters.get("project_dir")) for r in runs]
        (run,) = ours
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
            task_run_filter=TaskRunFilter(),
        )
    assert run.state is not None and run.state.is_completed(), run.state
    assert run.parameters["params_file"].endswith("params/production.yaml")
    for expected in ("version-data", "preprocess", "tune-head", "tune-bottom", "evaluate", "register"):
        found = [t for t in tasks if t.name.startswith(expected)]
        assert found and all(t.state and t.state.is_completed() for t in found), (
            expected,
            sorted(t.name for t in tasks),
        )


@pytest.mark.production
def test_dvc_remote_on_s3_holds_the_data_version(
    production_run: dict[str, Any], mlflow_client: Any, s3_server: S3Server
) -> None:
    root, env = production_run["root"], production_run["env"]
    _, parent = _champion_run(mlflow_client)
    md5 = parent.data.params["data.version"]
    proc = subprocess.run(
        [str(VENV_BIN / "dvc"), "status", "-c", "--json", "-r", "bitune", "data.dvc"],
        cwd=root, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout or "{}") == {}, proc.stdout
    manifest = f"dvc/files/md5/{md5[:2]}/{md5[2:]}"
    assert manifest in s3_server.keys("dvc/files/md5/"), "the data version's manifest is not in the bucket"
    assert (root / "data.dvc").read_text().count(md5) == 1


@pytest.mark.production
def test_bitune_log_lines_reach_the_flow_runs_log_on_the_prefect_server(
    production_run: dict[str, Any], prefect_server: str, tmp_path: Path
) -> None:
    """A scheduled run has no terminal: what bitune logs (here, why a run skipped) must be in the flow
    run's log on the server. A copy of the project, so the original keeps its one flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    copy = tmp_path / "project"
    shutil.copytree(production_run["root"], copy, ignore=shutil.ignore_patterns(".bitune"))
    env = {k: v for k, v in production_run["env"].items() if k != "PREFECT_LOGGING_EXTRA_LOGGERS"}
    argv = [str(VENV_BIN / "bitune"), "run", "--params", "params/production.yaml", "--project", str(copy),
            *production_run["sets"]]  # fmt: skip
    proc = subprocess.run(argv, cwd=copy, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "unchanged since run" in proc.stdout, proc.stdout[-2000:]
    with temporary_settings({PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])), limit=200)
        (run,) = [r for r in runs if r.parameters.get("project_dir") == str(copy)]
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])),
            limit=200,
        )
    ours = [entry.message for entry in logs if entry.name == "bitune"]
    assert any("already trained this data version" in m for m in ours), [e.message for e in logs]


@pytest.mark.production
def test_bitune_log_lines_reach_the_log_of_a_flow_run_started_without_the_cli(
    production_run: dict[str, Any], prefect_server: str, tmp_path: Path
) -> None:
    """A worker runs the flow function itself, not `bitune run`, so nothing the CLI sets up applies:
    bitune's INFO lines (why the run skipped) must still reach the flow run's log on the server."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    copy = tmp_path / "project"
    shutil.copytree(production_run["root"], copy, ignore=shutil.ignore_patterns(".bitune"))
    env = production_run["env"] | {"PREFECT_LOGGING_EXTRA_LOGGERS": "bitune"}  # as prefect.yaml sets it
    code = (
        "import sys; from flows.retrain import retrain; "
        "retrain(params_file='params/production.yaml', overrides=sys.argv[2:], project_dir=sys.argv[1])"
    )
    sets = production_run["sets"][1::2]  # the values of its `--set` flags
    argv = [str(VENV_BIN / "python"), "-c", code, str(copy), *sets]
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with temporary_settings({PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["retrain"])), limit=200)
        (run,) = [r for r in runs if r.parameters.get("project_dir") == str(copy)]
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])), limit=200
        )
    ours = [entry.message for entry in logs if entry.name == "bitune"]
    assert any("already trained this data version" in m for m in ours), [e.message for e in logs]
