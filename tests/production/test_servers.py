"""The production profile against real servers: MLflow and Prefect on PostgreSQL, DVC and MLflow
artifacts on S3 (moto), MLflow basic-auth as docker/mlflow-auth.ini configures it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from .servers import REPO, VENV_BIN, MlflowAuthServer, Postgres, S3Server

pytestmark = pytest.mark.production


def _pyfunc_model():  # type: ignore[no-untyped-def]
    """Stand-in for the classifier: the registry round trip is under test, not the model."""
    import mlflow.pyfunc

    class AddOneModel(mlflow.pyfunc.PythonModel):
        def predict(self, model_input: list[int], params=None) -> list[int]:  # type: ignore[no-untyped-def]
            return [x + 1 for x in model_input]

    return AddOneModel()


def test_mlflow_on_postgres_logs_runs_and_registers_a_champion(
    mlflow_server: str, postgres: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    experiment_id = client.create_experiment("production-smoke")
    run_id = client.create_run(experiment_id, run_name="smoke").info.run_id
    client.log_param(run_id, "strategy.name", "bidirectional")
    client.log_metric(run_id, "test/macro_f1", 0.875)
    report = tmp_path / "report.txt"
    report.write_text("macro_f1 0.875\n")
    client.log_artifact(run_id, str(report), "reports")

    # The fluent API (log_model) reads the URI from the environment; a leaked global would win.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    assert mlflow.get_tracking_uri() == mlflow_server, "a test set mlflow.set_tracking_uri globally"
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=_pyfunc_model(),
            pip_requirements=["mlflow"],
            registered_model_name="bitune-smoke",
        )
    version = info.registered_model_version
    client.set_registered_model_alias("bitune-smoke", "champion", version)

    champion = client.get_model_version_by_alias("bitune-smoke", "champion")
    assert champion.version == str(version) and champion.run_id == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["strategy.name"] == "bidirectional"
    assert run.data.metrics["test/macro_f1"] == pytest.approx(0.875)
    downloaded = client.download_artifacts(run_id, "reports/report.txt", str(tmp_path / "back"))
    assert Path(downloaded).read_text() == "macro_f1 0.875\n"
    loaded = mlflow.pyfunc.load_model("models:/bitune-smoke@champion")
    assert loaded.predict([1, 2]) == [2, 3]

    with postgres.connect("mlflow") as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM runs WHERE run_uuid = %s", (run_id,))
        assert cur.fetchall() == [("FINISHED",)]
        cur.execute("SELECT value FROM params WHERE run_uuid = %s AND key = 'strategy.name'", (run_id,))
        assert cur.fetchall() == [("bidirectional",)]
        cur.execute("SELECT version FROM registered_model_aliases WHERE name = %s AND alias = 'champion'",
                    ("bitune-smoke",))  # fmt: skip
        assert cur.fetchall() == [(int(version),)]


def test_prefect_on_postgres_records_a_completed_flow_run(prefect_server: str, postgres: Postgres) -> None:
    from prefect import flow, get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    @flow(name="bitune-production-smoke")
    def add_one(x: int) -> int:
        return x + 1

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        state = add_one(41, return_state=True)
        assert state.result() == 42
        with get_client(sync_client=True) as client:
            assert str(client.api_url).rstrip("/") == prefect_server
            run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.state is not None and run.state.is_completed()
    assert run.parameters == {"x": 41}

    with postgres.connect("prefect") as conn, conn.cursor() as cur:
        cur.execute("SELECT state_type FROM flow_run WHERE id = %s", (str(run.id),))
        assert cur.fetchall() == [("COMPLETED",)]


def _dvc(repo: Path, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(
        [str(VENV_BIN / "dvc"), *args], cwd=repo, env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _dvc_env(s3: S3Server, tmp_path: Path, endpoint_from_env: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(s3.env)
    if not endpoint_from_env:
        del env["AWS_ENDPOINT_URL"]  # the remote's own endpointurl must be enough
    env.update(DVC_NO_ANALYTICS="1", DVC_SITE_CACHE_DIR=str(tmp_path / "dvc-site"))
    return env


def test_dvc_remote_on_s3_pushes_and_pulls_byte_identical(s3_server: S3Server, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    env = _dvc_env(s3_server, tmp_path, endpoint_from_env=False)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, env, "init", "-q")
    _dvc(repo, env, "remote", "add", "-d", "s3remote", f"s3://{s3_server.bucket}/dvc-cli")
    _dvc(repo, env, "remote", "modify", "s3remote", "endpointurl", s3_server.endpoint)
    payload = os.urandom(64 * 1024) + b"labelled text\n"
    (repo / "train.bin").write_bytes(payload)
    _dvc(repo, env, "add", "-q", "train.bin")

    assert json.loads(_dvc(repo, env, "status", "-c", "--json")) != {}, "remote should lack the new file"
    _dvc(repo, env, "push", "-q")
    assert json.loads(_dvc(repo, env, "status", "-c", "--json")) == {}
    assert "in sync" in _dvc(repo, env, "status", "-c")
    assert any(key.startswith("dvc-cli/files/md5/") for key in s3_server.keys("dvc-cli/"))

    shutil.rmtree(repo / ".dvc" / "cache")
    (repo / "train.bin").unlink()
    _dvc(repo, env, "pull", "-q")
    assert (repo / "train.bin").read_bytes() == payload


def test_dvc_store_uses_an_s3_data_remote_from_params(
    s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--set data.remote=s3://...` with the endpoint from AWS_ENDPOINT_URL, as compose sets it."""
    from tasks import dvc_store

    for key, value in _dvc_env(s3_server, tmp_path, endpoint_from_env=True).items():
        monkeypatch.setenv(key, value)
    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / "data" / "train.csv").write_text("text,label\ngood,pos\nbad,neg\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)

    dvc_store.ensure_repo(root, f"s3://{s3_server.bucket}/dvc-store")
    version = dvc_store.add_and_push(root)

    assert dvc_store.remote_has_current(root)
    assert any(version.removesuffix(".dir")[2:] in key for key in s3_server.keys("dvc-store/"))


def test_mlflow_artifacts_are_proxied_to_s3(
    mlflow_compose_server: MlflowAuthServer,
    s3_server: S3Server,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow.tracking import MlflowClient

    # The client holds no S3 credentials: the upload can only reach the bucket through the server.
    for key in [k for k in os.environ if k.startswith("AWS_") or k == "MLFLOW_S3_ENDPOINT_URL"]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", mlflow_compose_server.admin[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", mlflow_compose_server.admin[1])
    client = MlflowClient(tracking_uri=mlflow_compose_server.url)
    experiment_id = client.create_experiment("production-s3")
    run_id = client.create_run(experiment_id).info.run_id
    (tmp_path / "confusion.csv").write_text("pos,neg\n9,1\n")
    client.log_artifact(run_id, str(tmp_path / "confusion.csv"), "eval")

    keys = s3_server.keys("mlflow/")
    assert [k for k in keys if k.endswith(f"{run_id}/artifacts/eval/confusion.csv")], keys
    back = client.download_artifacts(run_id, "eval/confusion.csv", str(tmp_path / "back"))
    assert Path(back).read_text() == "pos,neg\n9,1\n"


def test_mlflow_basic_auth_denies_strangers_and_new_users_by_default(
    mlflow_compose_server: MlflowAuthServer,
) -> None:
    api = f"{mlflow_compose_server.url}/api/2.0/mlflow"
    admin = mlflow_compose_server.admin

    assert requests.get(f"{api}/experiments/search", params={"max_results": 1}, timeout=10).status_code == 401
    assert requests.get(f"{api}/experiments/search", params={"max_results": 1}, auth=(admin[0], "wrong"),
                        timeout=10).status_code == 401  # fmt: skip
    created = requests.post(f"{api}/experiments/create", json={"name": "private"}, auth=admin, timeout=10)
    assert created.status_code == 200, created.text
    experiment_id = created.json()["experiment_id"]
    user = requests.post(f"{api}/users/create", json={"username": "alice", "password": "alice-pass-123"},
                         auth=admin, timeout=10)  # fmt: skip
    assert user.status_code == 200, user.text

    # default_permission = NO_PERMISSIONS (docker/mlflow-auth.ini): alice may not read admin's experiment.
    denied = requests.get(f"{api}/experiments/get", params={"experiment_id": experiment_id},
                          auth=("alice", "alice-pass-123"), timeout=10)  # fmt: skip
    assert denied.status_code == 403, denied.text
    allowed = requests.get(
        f"{api}/experiments/get", params={"experiment_id": experiment_id}, auth=admin, timeout=10
    )
    assert allowed.status_code == 200
    grant = requests.post(
        f"{mlflow_compose_server.url}/api/3.0/mlflow/users/permissions/grant",
        json={
            "username": "alice",
            "resource_type": "experiment",
            "resource_id": experiment_id,
            "permission": "READ",
        },
        auth=admin,
        timeout=10,
    )  # the call docs/production.md shows
    assert grant.status_code == 200, grant.text
    granted = requests.get(
        f"{api}/experiments/get",
        params={"experiment_id": experiment_id},
        auth=("alice", "alice-pass-123"),
        timeout=10,
    )
    assert granted.status_code == 200, granted.text


def test_prefect_yaml_deploys_with_its_schedule_and_concurrency(prefect_server: str, tmp_path: Path) -> None:
    """`prefect deploy --all` from prefect.yaml, against a stand-in flow with retrain's signature."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    project = tmp_path / "project"
    (project / "flows").mkdir(parents=True)
    shutil.copy(REPO / "prefect.yaml", project / "prefect.yaml")
    (project / "flows" / "retrain.py").write_text(
        "from prefect import flow\n\n\n"
        "@flow\n"
        "def retrain(params_file: str = 'params/default.yaml', overrides: list[str] | None = None) -> None:\n"
        "    pass\n"
    )
    with temporary_settings({PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="bitune", type="process"), overwrite=True)
        env = {**os.environ, "PREFECT_API_URL": prefect_server}
        proc = subprocess.run([str(VENV_BIN / "prefect"), "--no-prompt", "deploy", "--all"], cwd=project,
                              env=env, capture_output=True, text=True, check=False, timeout=120)  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        deployment = client.read_deployment_by_name("retrain/retrain-nightly")

    assert deployment.entrypoint == "flows/retrain.py:retrain"
    assert deployment.parameters == {"params_file": "params/production.yaml", "overrides": []}
    assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
    assert deployment.global_concurrency_limit is not None
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options is not None
    assert deployment.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    assert deployment.work_pool_name == "bitune"


def test_a_wrong_database_password_is_said_in_seconds_naming_the_reason(postgres: Postgres) -> None:
    """MLflow retried creating its engine for about 100 s, then advised checking a folder."""
    from bitune.errors import TrackingError
    from tasks.tracking import TrackingSettings, check_database, check_store

    wrong = f"postgresql://{postgres.user}:not-{postgres.password}@{postgres.host}:{postgres.port}/mlflow"
    with pytest.raises(TrackingError) as raised:
        check_store(TrackingSettings(uri=wrong, experiment="bitune", artifact_location=None))
    message = str(raised.value)
    assert message.startswith(
        f"tracking.uri: cannot connect to the database at postgresql://{postgres.user}:***@"
    )
    assert "password authentication failed" in message and "check the user and password" in message
    assert postgres.password not in message and "\n" not in message
    right = f"postgresql://{postgres.user}:{postgres.password}@{postgres.host}:{postgres.port}/mlflow"
    check_database(TrackingSettings(uri=right, experiment="bitune", artifact_location=None), timeout_s=5)
