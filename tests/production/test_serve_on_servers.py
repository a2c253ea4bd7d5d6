"""`bitune serve` against the production MLflow server: basic-auth, artifacts proxied to S3.

The champion the production flow run registered is served from a shell without the venv on PATH and
without S3 credentials: the served process must reach the weights through the tracking server with
MLFLOW_TRACKING_USERNAME/PASSWORD from the environment, and never print the password.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import make_project
from loopback_server import free_port, server_in_own_group, wait_until_up

from .servers import SERVER_LOGS, VENV_BIN, MlflowAuthServer

MODEL_NAME = "bitune-classifier"
TEXTS = ["a great film, i loved the story", "the worst book of the year", "not bad at all"]
READY_WITHIN_S = 120
# a down server must fail at once, not after MLflow's retries (minutes); generous for a loaded CPU
FAILS_WITHIN_S = 60


def user_env(base: dict[str, str]) -> dict[str, str]:
    """`base` as a user's shell has it: the venv not on PATH, no S3 credentials (only the server
    holds those), the tiny model offline."""
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != str(VENV_BIN))
    env = {k: v for k, v in base.items() if not k.startswith("AWS_") and k != "MLFLOW_S3_ENDPOINT_URL"}
    return env | {"PATH": path or "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def serve_argv(root: Path, *extra: str) -> list[str]:
    return [str(VENV_BIN / "bitune"), "serve", "--params", "params/production.yaml", "--project", str(root),
            *extra]  # fmt: skip


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """Exit status 2, one error line plus the pointer to the log, and mlflow models serve never started."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("(details in "), lines
    assert "Serving" not in proc.stdout and "Traceback" not in proc.stderr
    return lines[0]


@pytest.mark.production
def test_bitune_serve_on_the_auth_server_answers_like_the_registry_model(
    production_run: dict[str, Any],
    mlflow_compose_server: MlflowAuthServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    env = user_env(production_run["env"])
    for key in [k for k in os.environ if k.startswith(("AWS_", "MLFLOW_"))]:
        monkeypatch.delenv(key)
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", env["MLFLOW_TRACKING_URI"])
    champion = MlflowClient().get_model_version_by_alias(MODEL_NAME, "champion")
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    expected = model.predict(pd.DataFrame({"text": TEXTS}))

    server_log = SERVER_LOGS["mlflow-compose"]
    seen = len(server_log.read_bytes())
    port = free_port()
    log = tmp_path / "serve.log"
    command = serve_argv(production_run["root"], "--port", str(port))
    with server_in_own_group(command, tmp_path, env, log) as proc:
        wait_until_up(f"http://127.0.0.1:{port}/ping", proc, log, "bitune serve", READY_WITHIN_S)
        # the README's request shape
        body = json.dumps({"dataframe_split": {"columns": ["text"], "data": [[t] for t in TEXTS]}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            served = pd.DataFrame(json.loads(response.read())["predictions"])
    output = log.read_text()
    # the weights came through the server, not from presigned URLs on its S3 endpoint, which compose
    # names `minio:9000`: a host that serves cannot resolve that
    requests = server_log.read_bytes()[seen:].decode(errors="replace")
    # a logged model's files: .../artifacts/<experiment>/models/<model_id>/artifacts/MLmodel
    assert "/mlflow-artifacts/artifacts/" in requests and "/artifacts/MLmodel" in requests, requests[-2000:]
    assert "/mlflow-artifacts/presigned/" not in requests, "artifacts downloaded past the server"
    assert (
        f"Serving {MODEL_NAME} version {champion.version} (" in output
        and f"on http://127.0.0.1:{port}/invocations (store {mlflow_compose_server.url})" in output
    ), output[:2000]
    assert mlflow_compose_server.admin[1] not in output, "the password reached the terminal"
    assert list(served.columns) == list(expected.columns)
    assert served["label"].tolist() == expected["label"].tolist()
    probs = [c for c in expected.columns if c.startswith("prob_")]
    assert served[["score", *probs]].to_numpy().ravel().tolist() == pytest.approx(
        expected[["score", *probs]].to_numpy().ravel().tolist(), abs=1e-5
    )


@pytest.mark.production
def test_bitune_serve_with_refused_credentials_is_one_line_without_the_password(
    production_run: dict[str, Any], mlflow_compose_server: MlflowAuthServer
) -> None:
    wrong = "not-the-" + mlflow_compose_server.admin[1]
    env = user_env(production_run["env"]) | {"MLFLOW_TRACKING_PASSWORD": wrong}
    proc = subprocess.run(
        serve_argv(production_run["root"], "--port", str(free_port())),
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    line = one_line_error(proc)
    refused = f"error: MLFLOW_TRACKING_URI: MLflow at {mlflow_compose_server.url} refused: "
    assert line.startswith(refused), line
    assert "401" in line and "MLFLOW_TRACKING_USERNAME/PASSWORD" in line, line
    assert wrong not in proc.stdout + proc.stderr


def test_bitune_serve_with_the_server_down_is_one_line_naming_it(tmp_path: Path) -> None:
    """Before `mlflow models serve` starts, and in seconds (MLflow alone retries for minutes)."""
    root = make_project(tmp_path / "project", tmp_path)
    down = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env = user_env(env) | {"MLFLOW_TRACKING_URI": down}
    started = time.monotonic()
    proc = subprocess.run(
        serve_argv(root), env=env, capture_output=True, text=True, timeout=FAILS_WITHIN_S * 2, check=False
    )
    assert time.monotonic() - started < FAILS_WITHIN_S
    line = one_line_error(proc)
    assert line == (
        f"error: MLFLOW_TRACKING_URI: cannot reach MLflow at {down} (no answer); "
        "start the server or point tracking.uri / MLFLOW_TRACKING_URI at a running one"
    )
