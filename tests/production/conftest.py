"""Session fixtures: real PostgreSQL, MLflow, Prefect and S3 (moto) servers on 127.0.0.1.

Every server gets a free port and a temp dir, logs to a file, and is torn down at the end of the
session. When a test fails, the tail of each server log is attached to its report. Missing system
binaries fail the fixture (never a silent skip): `scripts/install-system-deps.sh` installs them.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import make_project, tiny_overrides

from .servers import (
    COMPOSE_MLFLOW_APP,
    MLFLOW_SERVER_ENV,
    REPO,
    SERVER_LOGS,
    VENV_BIN,
    MlflowAuthServer,
    Postgres,
    S3Server,
    free_port,
    log_tail,
    mlflow_server_argv,
    prefect_server_argv,
    prefect_server_env,
    run_postgres,
    start_server,
)

DATABASES = ("mlflow", "mlflow_auth", "mlflow_compose", "prefect")
SERVER_START_TIMEOUT = 120.0
RUN_TIMEOUT = 240


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for name, path in SERVER_LOGS.items():
            report.sections.append((f"server log: {name} ({path})", log_tail(path)))


@contextmanager
def healthy_server(
    name: str, argv: list[str], env: dict[str, str], server_dir: Path, health: str
) -> Iterator[None]:
    """`start_server` in `server_dir`, up once `health` answers 200; stopped when the block ends."""
    server = start_server(name, argv, env, server_dir, cwd=server_dir)
    try:
        server.wait_http(health, SERVER_START_TIMEOUT)
        yield
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    try:
        with run_postgres(DATABASES, password=secrets.token_urlsafe(16)) as server:
            yield server
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def server_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def mlflow_server(postgres: Postgres, server_dir: Path) -> Iterator[str]:
    """MLflow on PostgreSQL with artifacts proxied to a local folder; yields the tracking URL."""
    port = free_port()
    argv = mlflow_server_argv(postgres.dsn("mlflow"), str(server_dir / "mlartifacts"), "127.0.0.1", port)
    url = f"http://127.0.0.1:{port}"
    with healthy_server("mlflow", argv, {**postgres.env, **MLFLOW_SERVER_ENV}, server_dir, f"{url}/health"):
        yield url


@pytest.fixture(scope="session")
def prefect_server(postgres: Postgres, server_dir: Path) -> Iterator[str]:
    """Prefect server on PostgreSQL (asyncpg); yields the API URL."""
    port = free_port()
    env = {
        **postgres.env,
        **prefect_server_env(postgres.dsn("prefect", driver="asyncpg")),
        "PREFECT_HOME": str(server_dir / "prefect-home"),
    }
    api = f"http://127.0.0.1:{port}/api"
    with healthy_server("prefect", prefect_server_argv("127.0.0.1", port), env, server_dir, f"{api}/health"):
        yield api


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 in server mode (a thread of this process) with one bucket."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
    }
    s3 = S3Server(endpoint, "bitune", env)
    try:
        s3.client().create_bucket(Bucket=s3.bucket)
        yield s3
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_compose_server(
    postgres: Postgres, s3_server: S3Server, server_dir: Path
) -> Iterator[MlflowAuthServer]:
    """MLflow as docker/compose.yaml runs it: basic-auth from docker/mlflow-auth.ini, artifacts on S3.

    Only the auth database URI is pointed at the test cluster; every other key is the file's own.
    """
    if importlib.util.find_spec("flask_wtf") is None:
        pytest.fail(
            "mlflow --app-name basic-auth needs Flask-WTF: pip install 'mlflow[auth]==3.17.2'", pytrace=False
        )
    ini = configparser.ConfigParser()
    ini.read(REPO / "docker" / "mlflow-auth.ini")
    ini["mlflow"]["database_uri"] = postgres.dsn("mlflow_auth")
    auth_config = server_dir / "mlflow-auth.ini"
    with auth_config.open("w") as out:
        ini.write(out)
    admin_password = secrets.token_urlsafe(16)
    env = {
        **postgres.env,
        **s3_server.env,
        **MLFLOW_SERVER_ENV,
        "MLFLOW_AUTH_CONFIG_PATH": str(auth_config),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
    }
    port = free_port()
    argv = mlflow_server_argv(
        postgres.dsn("mlflow_compose"),
        f"s3://{s3_server.bucket}/mlflow",
        "127.0.0.1",
        port,
        app_name=COMPOSE_MLFLOW_APP,
        allowed_hosts=f"127.0.0.1:{port},localhost:{port}",
    )
    url = f"http://127.0.0.1:{port}"
    with healthy_server("mlflow-compose", argv, env, server_dir, f"{url}/health"):
        yield MlflowAuthServer(url, admin_password)


@pytest.fixture(scope="session")
def production_run(
    mlflow_compose_server: MlflowAuthServer,
    prefect_server: str,
    s3_server: S3Server,
    tiny_bert_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """One `bitune run --params params/production.yaml` against the servers, as a user runs it; the
    tests read what it left behind (session-wide: a run takes minutes, and the serve tests reuse it)."""
    root = make_project(tmp_path_factory.mktemp("production-project"), tiny_bert_dir)
    remote = f"s3://{s3_server.bucket}/dvc"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "PREFECT_"))}
    env.update(s3_server.env)  # DVC reads the endpoint from AWS_ENDPOINT_URL, as compose sets it
    del env["MLFLOW_S3_ENDPOINT_URL"]  # the client reaches MLflow's artifacts only through the server
    env.update(
        MLFLOW_TRACKING_URI=mlflow_compose_server.url,
        MLFLOW_TRACKING_USERNAME=mlflow_compose_server.admin[0],
        MLFLOW_TRACKING_PASSWORD=mlflow_compose_server.admin[1],
        PREFECT_API_URL=prefect_server,
        PREFECT_HOME=str(root.parent / "prefect-home"),
        DVC_NO_ANALYTICS="1",
        DVC_SITE_CACHE_DIR=str(root.parent / "dvc-site"),
    )
    sets = ["data.source=demo", f"data.remote={remote}", *tiny_overrides(tiny_bert_dir)]
    argv = [str(VENV_BIN / "bitune"), "run", "--params", "params/production.yaml", "--project", str(root),
            *[arg for s in sets for arg in ("--set", s)]]  # fmt: skip
    proc = subprocess.run(
        argv, cwd=root, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False
    )
    assert proc.returncode == 0, f"bitune run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    yield {
        "root": root,
        "env": env,
        "remote": remote,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "sets": [arg for s in sets for arg in ("--set", s)],  # the run's --set flags, to run it again
    }
