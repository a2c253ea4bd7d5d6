"""`bitune schedule` outlasts its Prefect server going away: one line when it goes, one when it is back,
and a run triggered after the outage is picked up.

Found in an audit: Prefect's runner gave up polling after three polls without an answer, so a Prefect
server restarted under `bitune schedule` left it alive but serving nothing, after about two hundred
lines of tracebacks (Prefect losing its websocket, both poll loops giving up, asyncio reporting a
callback Prefect got wrong) and a "coroutine ... was never awaited" warning.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import make_project, tiny_overrides
from loopback_server import free_port, stop_group, wait_until_up

from flows.prefect_outage import ServerOutage, WebsocketLost, outlasting_loop

BITUNE = Path(sys.executable).with_name("bitune")
PREFECT = Path(sys.executable).with_name("prefect")
API = "http://127.0.0.1:4200/api"
OBSERVER = "prefect.FlowRunCancellingObserver"
SERVER_AWAY = (
    "the Prefect server at {api} does not answer (ConnectError); still serving: runs that come due start "
    "once it is back"
)
SERVER_BACK = r"the Prefect server answers again \(away \d+ s\)"


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.said: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.said.append(record.getMessage())


@pytest.fixture
def runner_lines() -> Iterator[list[str]]:
    """What the loop says on Prefect's runner logger."""
    lines = Lines()
    logger = logging.getLogger("prefect.runner")
    logger.addHandler(lines)
    try:
        yield lines.said
    finally:
        logger.removeHandler(lines)


def _polls(*outcomes: BaseException | None) -> Any:
    """A workload that raises or returns, one outcome per poll."""
    remaining = list(outcomes)

    async def poll() -> None:
        outcome = remaining.pop(0)
        if outcome is not None:
            raise outcome

    return poll


def _status(code: int) -> httpx.HTTPStatusError:
    request = httpx.Request("GET", API)
    return httpx.HTTPStatusError(str(code), request=request, response=httpx.Response(code, request=request))


def test_polling_outlasts_an_outage_saying_it_once_each_way(runner_lines: list[str]) -> None:
    """Prefect's loop gave up for good after three polls without an answer; this one keeps polling."""
    lost = httpx.ConnectError("All connection attempts failed")
    polls = _polls(lost, ConnectionRefusedError(111, "refused"), _status(503), lost, None, None, _status(404))
    with pytest.raises(httpx.HTTPStatusError, match="404"):  # not the server being away: raised as before
        asyncio.run(outlasting_loop(ServerOutage(API))(workload=polls, interval=0.001, jitter_range=0.3))
    assert len(runner_lines) == 2, runner_lines
    assert runner_lines[0] == SERVER_AWAY.format(api=API)
    assert re.fullmatch(SERVER_BACK, runner_lines[1]), runner_lines


@pytest.mark.parametrize("ends_on_cancel", [True, False])
def test_only_the_cancellation_watchs_loop_ends_quietly_when_cancelled(ends_on_cancel: bool) -> None:
    """The watch's done-callback asks its task for an exception: a cancelled task raises there, an
    asyncio traceback at every shutdown. The runs' poller is cancelled by anyio as usual."""

    async def cancelled_after_a_poll() -> asyncio.Task[None]:
        loop = outlasting_loop(ServerOutage(API), ends_on_cancel=ends_on_cancel)
        task = asyncio.create_task(loop(workload=_polls(None, None), interval=60))
        await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return task

    task = asyncio.run(cancelled_after_a_poll())
    assert task.cancelled() is not ends_on_cancel
    if ends_on_cancel:
        assert task.exception() is None


def _record(name: str, exc: BaseException) -> logging.LogRecord:
    return logging.LogRecord(
        name, logging.WARNING, __file__, 1, "websocket failed", None, (type(exc), exc, None)
    )


def test_the_watchs_websocket_dropping_with_the_server_is_not_shown_again() -> None:
    quiet = WebsocketLost()
    assert not quiet.filter(_record(OBSERVER, ConnectionRefusedError(111, "refused")))
    assert quiet.filter(_record(OBSERVER, ValueError("bad frame")))  # not an outage: Prefect's words
    assert quiet.filter(_record("prefect.runner", ConnectionRefusedError(111, "refused")))  # not the watch


def _start_server(home: Path, port: int) -> subprocess.Popen[bytes]:
    """`prefect server start` on SQLite in `home`; started again on the same home, it has the same data."""
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env |= {"PREFECT_UI_ENABLED": "false"}
    log = home / "server.log"
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            cwd=home, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    wait_until_up(f"http://127.0.0.1:{port}/api/health", proc, log, "prefect", 120)
    return proc


@pytest.fixture
def servers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The Prefect servers a test started; stopped at its end, whatever happened."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for proc in started:
            stop_group(proc)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def _wait_for(log: Path, pattern: str, proc: subprocess.Popen[bytes], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if re.search(pattern, log.read_text(errors="replace")):
            return
        assert proc.poll() is None, f"bitune schedule exited:\n{_tail(log)}"
        time.sleep(0.5)
    pytest.fail(f"{pattern!r} not said within {within_s:.0f} s:\n{_tail(log)}")


def _wait_until_served(client: Any, name: str, proc: subprocess.Popen[bytes], log: Path) -> Any:
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"bitune schedule exited:\n{_tail(log)}"
        try:
            deployment = client.read_deployment_by_name(f"retrain/{name}")
            if deployment.status is not None and deployment.status.value == "READY":
                return deployment  # READY once the runner has polled for it
        except ObjectNotFound:
            pass
        time.sleep(0.5)
    pytest.fail(f"not served within 120 s:\n{_tail(log)}")


def _final_state(client: Any, run_id: Any, proc: subprocess.Popen[bytes], log: Path) -> Any:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        run = client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return run.state
        assert proc.poll() is None, f"bitune schedule exited:\n{_tail(log)}"
        time.sleep(0.5)
    pytest.fail(f"run {run_id} not final within 180 s:\n{_tail(log)}")


@pytest.mark.slow
def test_schedule_outlives_a_prefect_server_outage_saying_so_in_two_lines(
    tmp_path: Path, tiny_bert_dir: Path, servers: list[subprocess.Popen[bytes]]
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home, port = tmp_path / "prefect-server", free_port()
    api = f"http://127.0.0.1:{port}/api"
    servers.append(_start_server(home, port))
    root = make_project(tmp_path / "project", tiny_bert_dir)
    name = f"outage-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "PREFECT_"))}
    env |= {"PREFECT_API_URL": api, "PREFECT_HOME": str(tmp_path / "prefect-home")}
    env |= {"PREFECT_RUNNER_POLL_FREQUENCY": "1", "HF_HUB_OFFLINE": "1"}
    sets = [arg for o in tiny_overrides(tiny_bert_dir) for arg in ("--set", o)]
    log = tmp_path / "schedule.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(BITUNE), "schedule", "--cron", "0 3 * * *", "--name", name, "--project", str(root), *sets],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        with temporary_settings({PREFECT_API_URL: api}):
            with get_client(sync_client=True) as client:
                _wait_until_served(client, name, proc, log)
            stop_group(servers.pop())  # the outage: longer than Prefect's three polls
            _wait_for(log, re.escape(SERVER_AWAY.format(api=api)), proc, 60)
            time.sleep(5)
            servers.append(_start_server(home, port))  # back, same port and database
            _wait_for(log, SERVER_BACK, proc, 60)
            with get_client(sync_client=True) as client:
                deployment = client.read_deployment_by_name(f"retrain/{name}")
                # a run with a params error: the runner picking it up is the point, not training
                run = client.create_flow_run_from_deployment(
                    deployment.id, parameters={"overrides": ["no_such_key=1"]}
                )
                state = _final_state(client, run.id, proc, log)
        assert state.name == "Failed" and "no_such_key" in str(state.message), state
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = log.read_text(errors="replace")
    assert proc.returncode == 0, output[-3000:]
    said = [
        line.split(" - ", 1)[1] for line in output.splitlines() if "| WARNING | prefect.runner - " in line
    ]
    assert len(said) == 2 and said[0] == SERVER_AWAY.format(api=api), output[-3000:]
    assert re.fullmatch(SERVER_BACK, said[1]), said
    for noise in ("Failed the last 3 attempts", "| ERROR   | asyncio", "was never awaited", "Traceback"):
        assert noise not in output, (noise, output[-3000:])
    assert output.rstrip().endswith(f"`bitune schedule --name {name}` serves it again."), output[-1000:]
