"""`bitune schedule` as its users run it, on a real Prefect server (SQLite, loopback): the deployment it
registers, the final state of each kind of scheduled run, and how SIGTERM stops it.

One `bitune schedule` process (the command of docs/production.md, with a time zone) serves the module;
its runs are triggered through the server as the UI's "Run" does. The runner polls every second here
(PREFECT_RUNNER_POLL_FREQUENCY; ten seconds by default), which changes when runs start, not how they end.
The SIGTERM test stops that process, so it runs last.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import time
import uuid
import zoneinfo
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import make_project, tiny_overrides
from loopback_server import free_port, server_in_own_group, wait_until_up
from mlflow.tracking import MlflowClient

from bitune.project_lock import LOCK_FILE, hold_project

pytestmark = pytest.mark.slow

BITUNE = Path(sys.executable).with_name("bitune")
PREFECT = Path(sys.executable).with_name("prefect")
BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
RUN_TIMEOUT = 240.0
LONG_TRAINING = "strategy.phases.1.epochs=60"  # a bottom phase that is still training when SIGTERM comes


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`prefect server start` on SQLite in a temp home: a real server with a real scheduler."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
    }
    argv = [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    with server_in_own_group(argv, home, env, home / "server.log") as proc:
        wait_until_up(f"http://127.0.0.1:{port}/api/health", proc, home / "server.log", "prefect", 120)
        yield f"http://127.0.0.1:{port}/api"


@pytest.fixture(scope="module")
def serving(
    prefect_api: str, tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """`bitune schedule --cron "0 3 * * *" --timezone Europe/Berlin` serving a fresh project."""
    base = tmp_path_factory.mktemp("scheduled")
    root = make_project(base / "project", tiny_bert_dir)
    name = f"retrain-test-{uuid.uuid4().hex[:8]}"
    sets = [arg for o in tiny_overrides(tiny_bert_dir) for arg in ("--set", o)]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "PREFECT_"))}
    env |= {
        "PREFECT_API_URL": prefect_api,
        "PREFECT_HOME": str(base / "prefect-home"),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        "HF_HUB_OFFLINE": "1",
    }
    argv = [str(BITUNE), "schedule", "--cron", "0 3 * * *", "--timezone", "Europe/Berlin", "--name", name,
            "--project", str(root), *sets]  # fmt: skip
    log = base / "schedule.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=base, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield {"root": root, "name": name, "proc": proc, "log": log, "sets": tiny_overrides(tiny_bert_dir)}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the CLI and any flow run it left, if a test failed
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


@pytest.fixture
def client(prefect_api: str) -> Iterator[Any]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_api}), get_client(sync_client=True) as opened:
        yield opened


def _deployment(client: Any, serving: dict[str, Any], within_s: float = 90.0) -> Any:
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        assert serving["proc"].poll() is None, f"bitune schedule exited:\n{_tail(serving['log'])}"
        try:
            return client.read_deployment_by_name(f"retrain/{serving['name']}")
        except ObjectNotFound:
            time.sleep(0.5)
    pytest.fail(f"no deployment within {within_s:.0f} s:\n{_tail(serving['log'])}")


def _tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-40:])


def _run(client: Any, serving: dict[str, Any], extra: Sequence[str] = (), **params: Any) -> Any:
    """Trigger a run with the deployment's overrides plus `extra`; wait for its final state."""
    deployment = _deployment(client, serving)
    run = client.create_flow_run_from_deployment(
        deployment.id, parameters={"overrides": [*serving["sets"], *extra], **params}
    )
    return _final(client, serving, run.id)


def _final(client: Any, serving: dict[str, Any], run_id: Any) -> Any:
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        run = client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return run
        assert serving["proc"].poll() is None, f"bitune schedule exited:\n{_tail(serving['log'])}"
        time.sleep(0.5)
    pytest.fail(f"run {run_id} not final within {RUN_TIMEOUT:.0f} s:\n{_tail(serving['log'])}")


def _champion(root: Path) -> str | None:
    """The champion's version; None before any run registered one."""
    from mlflow.exceptions import MlflowException

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        return str(client.get_model_version_by_alias("bitune-classifier", "champion").version)
    except MlflowException:
        return None


def test_the_documented_command_registers_the_cron_in_its_time_zone(
    serving: dict[str, Any], client: Any
) -> None:
    """The deployment has the cron line and zone as typed, one run at a time (newcomers cancelled),
    and the server's scheduler makes its runs at 03:00 Berlin time, the times the CLI printed."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    deployment = _deployment(client, serving)
    [schedule] = deployment.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == (
        "0 3 * * *",
        "Europe/Berlin",
        True,
    )
    assert not deployment.paused
    assert deployment.entrypoint == "flows.retrain.retrain"
    assert deployment.global_concurrency_limit is not None and deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options.collision_strategy.value == "CANCEL_NEW"
    assert deployment.parameters["project_dir"] == str(serving["root"])
    assert deployment.parameters["force"] is False

    deadline = time.monotonic() + 90
    scheduled: list[Any] = []
    while time.monotonic() < deadline and not scheduled:
        scheduled = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id]))
        )
        time.sleep(1)
    assert scheduled, "the server's scheduler made no run in 90 s"
    starts = sorted(r.expected_start_time.astimezone(BERLIN) for r in scheduled if r.auto_scheduled)
    assert starts and all((t.hour, t.minute) == (3, 0) for t in starts), starts
    printed = serving["log"].read_text()
    first = starts[0]
    assert f"Next runs: {first:%a %Y-%m-%d} 03:00 {first:%Z}" in printed, printed


def test_scheduled_runs_end_in_states_that_say_what_happened(serving: dict[str, Any], client: Any) -> None:
    """Trained, skipped (unchanged data and params), failed on bad data, failed with MLflow down,
    cancelled by the project lock: each final state carries its one-line reason, none is retried,
    and only the run that trained touched the champion or the data version."""
    root = serving["root"]
    trained = _run(client, serving)
    assert trained.state.is_completed() and trained.state.name == "Completed", trained.state
    assert _champion(root) == "1"
    data_version = (root / "data.dvc").read_text()

    skipped = _run(client, serving)
    assert skipped.state.is_completed() and skipped.state.name == "Skipped", skipped.state
    assert skipped.state.message.startswith("nothing to do: data version and params unchanged since run ")
    assert skipped.total_run_time < datetime.timedelta(seconds=20), skipped.total_run_time

    bad = root.parent / "bad.csv"
    bad.write_text("text,label\ngood movie,1\n,0\n")
    bad_data = _run(client, serving, [f"data.source={bad}"])
    assert bad_data.state.is_failed(), bad_data.state
    assert "bad.csv: missing or blank text at row 3" in bad_data.state.message

    tracking_down = _run(client, serving, [f"tracking.uri=http://127.0.0.1:{free_port()}"])
    assert tracking_down.state.is_failed(), tracking_down.state
    assert "cannot reach MLflow at http://127.0.0.1:" in tracking_down.state.message

    with hold_project(root):  # a retrain another deployment, or `bitune run`, started on this project
        blocked = _run(client, serving)
        told = _lock_message(root)
    assert blocked.state.is_cancelled(), blocked.state  # not Failed: nothing went wrong, it did not run
    assert blocked.state.message == told
    assert blocked.total_run_time < datetime.timedelta(seconds=10)

    for run in (trained, skipped, bad_data, tracking_down, blocked):
        assert run.run_count == 1 and run.empirical_policy.retries == 0, (run.name, run.run_count)
    assert _champion(root) == "1"
    assert (root / "data.dvc").read_text() == data_version


def _latest_parent_run(root: Path) -> Any:
    """The retrain's own MLflow run (its phases are nested runs under it), the latest one started."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow = MlflowClient(tracking_uri=uri)
    experiment = mlflow.get_experiment_by_name("bitune").experiment_id
    runs = mlflow.search_runs([experiment], order_by=["attributes.start_time DESC"], max_results=20)
    return next(r for r in runs if "mlflow.parentRunId" not in r.data.tags)


def _lock_message(root: Path) -> str:
    """What a second process is told while this one holds the project."""
    probe = subprocess.run(
        [sys.executable, "-c", HOLDER, str(root)], capture_output=True, text=True, timeout=60, check=False
    )
    assert probe.returncode == 1, probe.stderr
    return probe.stdout.strip()


HOLDER = """
import sys
from pathlib import Path
from bitune.project_lock import ProjectBusyError, hold_project
try:
    with hold_project(Path(sys.argv[1])):
        pass
except ProjectBusyError as exc:
    print(exc)
    sys.exit(1)
"""


def test_sigterm_pauses_the_schedule_and_stops_the_run_in_progress(
    serving: dict[str, Any], client: Any
) -> None:
    """`kill PID` (docker stop, systemd) reaches the CLI alone, not its flow run: the schedule is paused,
    the run is stopped as SIGTERM stops a retrain (MLflow runs KILLED, lock released, champion kept)
    and ends Cancelled, and the CLI exits 0 in seconds. Prefect's own SIGTERM handler left the run
    training, the CLI waiting for it, and the schedule active."""
    proc, root, log = serving["proc"], serving["root"], serving["log"]
    deployment = _deployment(client, serving)
    champion = _champion(root)
    earlier = len(log.read_bytes())  # the output of the runs before this one
    run = client.create_flow_run_from_deployment(
        deployment.id, parameters={"overrides": [*serving["sets"], LONG_TRAINING], "force": True}
    )
    deadline = time.monotonic() + RUN_TIMEOUT
    while b"Task run 'tune-head" not in log.read_bytes()[earlier:]:  # the head phase has started
        assert time.monotonic() < deadline, _tail(log)
        assert client.read_flow_run(run.id).state.is_final() is False, _tail(log)
        time.sleep(0.5)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"bitune schedule still running 60 s after SIGTERM:\n{_tail(log)}")
    stopped_after = time.monotonic() - signalled

    output = log.read_bytes()[earlier:].decode(errors="replace")
    assert proc.returncode == 0, _tail(log)
    assert "Traceback" not in output and "never awaited" not in output, _tail(log)
    assert f"Stopped serving retrain/{serving['name']}; its schedule is paused" in output
    assert client.read_deployment(deployment.id).paused
    ended = client.read_flow_run(run.id)
    assert ended.state.is_cancelled(), ended.state
    parent = _latest_parent_run(root)
    assert parent.info.status == "KILLED", parent.info
    assert _champion(root) == champion
    assert (root / LOCK_FILE).read_text() == ""  # released: the next run is not refused
    assert stopped_after < 45, stopped_after
    print(f"SIGTERM to exit: {stopped_after:.1f} s")
