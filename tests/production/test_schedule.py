"""`bitune schedule`: a scheduled retrain fires and finishes on a real Prefect server (PostgreSQL).

The CLI runs as a subprocess, exactly as a user starts it. A 10-second interval stands in for the
nightly cron so a scheduled run fires within seconds; the server's scheduler creates the runs
(`auto_scheduled`), the CLI's runner executes them. A run triggered while one trains is cancelled
by the deployment's concurrency limit, and no two runs ever overlap. The refusals (no server, bad
schedule or params) need no server and run in the fast suite.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_project, tiny_overrides
from mlflow.tracking import MlflowClient

from .servers import REPO, VENV_BIN, log_tail

INTERVAL_SECONDS = 10
COMPLETED_WITHIN = 170.0
NO_RUNS_AFTER = 45.0
CONCURRENCY_MESSAGE = "Deployment concurrency limit reached."


def _cli_env(prefect_api: str, tmp_path: Path) -> dict[str, str]:
    """The user's environment, pointed at the test server; no leaked MLflow or S3 settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "PREFECT_"))}
    env.update(PREFECT_API_URL=prefect_api, PREFECT_HOME=str(tmp_path / "prefect-home"))
    return env


@pytest.fixture
def serving(prefect_server: str, tiny_bert_dir: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """`bitune schedule --interval 10` on a fresh project; stopped (Ctrl-C, then kill) afterwards."""
    root = make_project(tmp_path / "project", tiny_bert_dir)
    name = f"retrain-test-{uuid.uuid4().hex[:8]}"
    sets = [arg for o in tiny_overrides(tiny_bert_dir) for arg in ("--set", o)]
    argv = [str(VENV_BIN / "bitune"), "schedule", "--interval", str(INTERVAL_SECONDS), "--name", name,
            "--project", str(root), *sets]  # fmt: skip
    log = tmp_path / "schedule.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=tmp_path,
            env=_cli_env(prefect_server, tmp_path),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    state = {"root": root, "name": name, "proc": proc, "log": log}
    try:
        yield state
    finally:
        _stop(proc)
        state["stopped"] = True


def _stop(proc: subprocess.Popen[bytes]) -> bool:
    """Ctrl-C first (the CLI pauses the schedule, then stops), then the whole group.

    True when Ctrl-C alone ended the CLI within 30 s.
    """
    stopped = False
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
            stopped = True
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # flow-run subprocesses left behind, if any
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)
    return stopped


@pytest.mark.parametrize(
    ("api_url", "args", "expected"),
    [
        (None, ["--cron", "0 3 * * *"], "PREFECT_API_URL is not set"),
        ("http://127.0.0.1:9/api", ["--cron", "0 3 * * *"], "no Prefect server answers"),
        (None, ["--cron", "61 * * * *"], "--cron '61 * * * *': a field is out of range"),
        (None, ["--cron", "0 3 * * *", "--timezone", "Mars/Base"], "--timezone 'Mars/Base': not an IANA"),
        (None, ["--cron", "0 3 * * *", "--interval", "60"], "choose one schedule"),
        (None, ["--set", "strategy.rounds=0"], "strategy.rounds"),
    ],
)
def test_schedule_refuses_in_one_line_without_a_server_or_with_bad_input(
    api_url: str | None, args: list[str], expected: str, tmp_path: Path
) -> None:
    """No Prefect server, a dead one, or a bad schedule/params: one line, exit 2, nothing registered."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # no profile that could name a server
    if api_url:
        env["PREFECT_API_URL"] = api_url
    shutil.copytree(REPO / "params", tmp_path / "params")
    proc = subprocess.run(
        [str(VENV_BIN / "bitune"), "schedule", "--project", str(tmp_path), *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    first, *rest = proc.stderr.strip().splitlines()
    assert first.startswith("error: ") and expected in first, proc.stderr
    assert rest == [f"(details in {tmp_path / '.bitune/logs/bitune.log'})"], proc.stderr
    if expected == "PREFECT_API_URL is not set":
        assert "prefect server start" in first and "export PREFECT_API_URL=" in first
    assert proc.stdout == ""


def _deployment_runs(client: Any, deployment_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    return client.read_flow_runs(
        flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])),
        limit=200,
    )


def _trigger_while_training(client: Any, deployment_id: Any) -> Any:
    """A manual trigger while a retrain holds the slot, proposed Pending as the runner would propose it."""
    from prefect.states import Pending

    extra = client.create_flow_run_from_deployment(deployment_id)
    client.set_flow_run_state(extra.id, Pending())
    return client.read_flow_run(extra.id)


@pytest.mark.production
def test_scheduled_retrain_fires_completes_registers_and_never_overlaps(
    serving: dict[str, Any], prefect_server: str
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    proc, log, root = serving["proc"], serving["log"], serving["root"]
    started = time.monotonic()
    deadline = started + COMPLETED_WITHIN
    deployment = completed = extra = None
    with temporary_settings({PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as client:
        while time.monotonic() < deadline and completed is None:
            assert proc.poll() is None, f"bitune schedule exited with {proc.returncode}:\n{log_tail(log)}"
            if deployment is None:
                try:
                    deployment = client.read_deployment_by_name(f"retrain/{serving['name']}")
                except ObjectNotFound:
                    time.sleep(1)
                    continue
            runs = _deployment_runs(client, deployment.id)
            assert runs or time.monotonic() < started + NO_RUNS_AFTER, (
                f"the server's scheduler made no run in {NO_RUNS_AFTER:.0f}s; see its log below "
                "(Prefect 3.8.8's scheduler fails on SQLAlchemy 2.1: 'Can't evaluate bulk DML statement')"
            )
            broken = [r for r in runs if r.state and (r.state.is_failed() or r.state.is_crashed())]
            assert not broken, f"{broken[0].name}: {broken[0].state.message}\n{log_tail(log)}"
            if extra is None and any(r.state and r.state.is_running() for r in runs):
                extra = _trigger_while_training(client, deployment.id)
            completed = next((r for r in runs if r.state and r.state.is_completed()), None)
            time.sleep(1)
        fired_after = time.monotonic() - started
        assert completed is not None, f"no completed run within {COMPLETED_WITHIN:.0f}s:\n{log_tail(log)}"
        runs = _deployment_runs(client, deployment.id)
        stopped_by_ctrl_c = _stop(proc)  # Ctrl-C: the CLI pauses the schedule and stops serving
        after_stop = client.read_deployment(deployment.id)

    # A run the server's scheduler made, not a manual trigger, with the CLI's parameters.
    assert completed.auto_scheduled
    assert completed.parameters["project_dir"] == str(root)
    assert completed.parameters["params_file"] == "params/default.yaml"
    assert completed.parameters["overrides"] == tiny_overrides_from(completed)

    # The deployment: module entrypoint, the interval, one run at a time, newcomers cancelled.
    assert deployment.entrypoint == "flows.retrain.retrain"
    assert [s.schedule.interval.total_seconds() for s in deployment.schedules] == [INTERVAL_SECONDS]
    assert deployment.global_concurrency_limit is not None and deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options is not None
    assert deployment.concurrency_options.collision_strategy.value == "CANCEL_NEW"

    # A run due while another trains is cancelled, saying why, and never runs.
    assert extra is not None, "never saw a run in Running"
    assert extra.state.is_cancelled() and extra.state.message == CONCURRENCY_MESSAGE, extra.state
    cancelled = [r for r in runs if r.state and r.state.is_cancelled()]
    assert all(r.state.message == CONCURRENCY_MESSAGE for r in cancelled), [
        r.state.message for r in cancelled
    ]
    assert all(r.total_run_time.total_seconds() == 0 for r in cancelled), "a cancelled run had run"
    # Never two retrains at once: every run that ran ended before the next one started (a run that
    # went straight to Cancelled gets start = end from Prefect, so it is left out).
    ran = sorted((r for r in runs if r.start_time and r not in cancelled), key=lambda r: r.start_time)
    for earlier, later in zip(ran, ran[1:], strict=False):
        assert earlier.end_time is not None and earlier.end_time <= later.start_time, (
            earlier.name,
            later.name,
        )

    # The project's own MLflow store got the model, promoted to champion.
    uri = f"sqlite:///{root / 'mlflow.db'}"
    champion = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(
        "bitune-classifier", "champion"
    )
    assert str(champion.version) == "1"

    # Nothing serves the deployment once the CLI stops, so its schedule must not keep making runs.
    assert after_stop.paused, "the schedule still runs with no runner serving it"
    assert stopped_by_ctrl_c, f"one Ctrl-C did not stop `bitune schedule` within 30 s:\n{log_tail(log)}"
    print(f"first scheduled run completed {fired_after:.0f}s after serving started; "
          f"{len(cancelled)} runs cancelled by the limit")  # fmt: skip


def tiny_overrides_from(run: Any) -> list[str]:
    """The overrides the CLI was given, as the run received them (the model path is the tiny BERT's)."""
    model = next(o for o in run.parameters["overrides"] if o.startswith("model.name_or_path="))
    return tiny_overrides(Path(model.partition("=")[2]))
