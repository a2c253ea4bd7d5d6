"""The run summary a Prefect artifact carries links the run on a real MLflow server, never its password."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest
from loopback_server import free_port, server_in_own_group, venv_first_path, wait_until_up
from mlflow.tracking import MlflowClient
from prefect import flow

from bitune.retrain_summary import RetrainSummary
from tasks.run_report import publish_summary, with_experiment

READY_WITHIN_S = 120


@flow(name="publish-only")
def publish_only(summary: RetrainSummary) -> str | None:
    """The retrain flow's last step on its own: an artifact belongs to a flow run."""
    return publish_summary(summary)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str]]:
    """An MLflow server on loopback with one run; yields (url, experiment id, run id)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = ["mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = os.environ | {"PATH": venv_first_path()}
    log = root / "server.log"
    with server_in_own_group(command, cwd=root, env=env, log=log) as proc:
        wait_until_up(
            f"{url}/ajax-api/2.0/mlflow/experiments/search?max_results=1", proc, log, "mlflow", READY_WITHIN_S
        )
        client = MlflowClient(tracking_uri=url)
        experiment_id = client.create_experiment("bitune")
        run_id = client.create_run(experiment_id).info.run_id
        yield url, experiment_id, run_id


def summary_on(uri: str, run_id: str) -> RetrainSummary:
    return RetrainSummary(
        data_version="0123abcd.dir",
        tracking_uri=uri,
        run_id=run_id,
        model_name="bitune-classifier",
        model_version="1",
        promoted=True,
    )


def test_the_run_link_names_the_runs_experiment_and_no_password(server: tuple[str, str, str]) -> None:
    url, experiment_id, run_id = server
    with_password = url.replace("http://", "http://alice:s3cret@")
    found = with_experiment(summary_on(with_password, run_id))
    assert found.experiment_id == experiment_id
    text = found.markdown()
    assert f"[MLflow run `{run_id}`]({url}/#/experiments/{experiment_id}/runs/{run_id})" in text
    assert f"({url}/#/models/bitune-classifier/versions/1)" in text
    assert "s3cret" not in text


def test_a_run_the_server_does_not_know_is_named_without_a_link(
    server: tuple[str, str, str], caplog: pytest.LogCaptureFixture
) -> None:
    url, _, _ = server
    with caplog.at_level(logging.WARNING, logger="bitune"):
        found = with_experiment(summary_on(url, "0" * 32))
    assert found.experiment_id is None and "#/experiments" not in found.markdown()
    assert f"cannot read run {'0' * 32} at {url}" in caplog.text


def test_the_published_artifact_carries_the_run_link(server: tuple[str, str, str], prefect_db: None) -> None:
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

    url, experiment_id, run_id = server
    artifact_id = publish_only(summary_on(url, run_id))
    assert artifact_id is not None
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[UUID(artifact_id)]))
        )
    assert f"({url}/#/experiments/{experiment_id}/runs/{run_id})" in str(artifact.data)
