"""`bitune schedule` refuses a schedule that would not do what was typed, naming the option, before it
contacts a Prefect server; and it says when the next runs come due, in the schedule's time zone.

Each refused case here was accepted once: an empty `--cron` became the nightly default, a six-field
line (seconds last, as Quartz writes it) came due every second of 03:00, `0 3 30 2 *` never came due,
`--timezone ''` registered an empty zone, `--interval inf` and `--name a/b` ended in a traceback and
`--name ''` registered `retrain/retrain`.
"""

from __future__ import annotations

import datetime
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bitune.errors import BituneError
from flows.schedule import check_name, make_schedule

REPO = Path(__file__).resolve().parents[1]
BITUNE = Path(sys.executable).with_name("bitune")
DEAD_SERVER = "http://127.0.0.1:9/api"  # nothing listens on the discard port


@pytest.mark.parametrize(
    ("cron", "interval", "timezone", "expected"),
    [
        ("", None, "UTC", "--cron '': empty; give five fields"),
        ("0 3 * * * *", None, "UTC", "--cron '0 3 * * * *': 6 fields (a sixth would be read as seconds)"),
        ("0 3 * *", None, "UTC", "--cron '0 3 * *': 4 fields; give five fields"),
        ("61 * * * *", None, "UTC", "--cron '61 * * * *': a field is out of range or not cron syntax"),
        ("0 3 30 2 *", None, "UTC", "--cron '0 3 30 2 *': no date ever matches it"),
        ("0 3 * * *", None, "", "--timezone '': not an IANA time zone"),
        ("0 3 * * *", None, "Mars/Base", "--timezone 'Mars/Base': not an IANA time zone; give a name like"),
        ("0 3 * * *", None, "europe/berlin", "did you mean Europe/Berlin?"),
        (None, 60.0, "Mars/Base", "--timezone 'Mars/Base': not an IANA time zone"),
        (None, float("inf"), "UTC", "--interval inf: give a number of seconds from 1 to 31622400"),
        (None, 1e15, "UTC", "--interval 1e+15: give a number of seconds from 1 to 31622400"),
        ("0 3 * * *", 60.0, "UTC", "--cron and --interval both given"),
    ],
)
def test_a_schedule_that_would_not_run_as_typed_is_refused_naming_the_option(
    cron: str | None, interval: float | None, timezone: str, expected: str
) -> None:
    with pytest.raises(BituneError) as refused:
        make_schedule(cron, interval, timezone)
    assert expected in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("name", ["", " ", "a/b", "50%"])
def test_a_deployment_name_prefect_would_change_or_refuse_is_refused(name: str) -> None:
    with pytest.raises(BituneError, match="--name .*without '/' or '%'"):
        check_name(name)


def test_accepted_schedules_keep_what_was_typed() -> None:
    assert make_schedule("@daily", None).describe() == "cron @daily (UTC)"
    assert make_schedule(None, None).describe() == "cron 0 3 * * * (UTC)"
    assert make_schedule(None, 3600, "Europe/Berlin").describe() == "every 3600 s"
    check_name("retrain-scheduled")


def test_next_runs_are_the_cron_line_in_its_time_zone() -> None:
    """03:00 in Berlin is 02:00 UTC in winter, 01:00 in summer: the zone is applied, not assumed UTC."""
    runs = make_schedule("0 3 * * *", None, "Europe/Berlin").next_runs(3)
    assert len(runs) == 3
    assert all((t.hour, t.minute) == (3, 0) and t.strftime("%Z") in ("CET", "CEST") for t in runs)
    assert all(t.astimezone(datetime.UTC).hour in (1, 2) for t in runs)
    assert runs[0] > datetime.datetime.now(datetime.UTC)
    assert runs[1] - runs[0] in (datetime.timedelta(hours=h) for h in (23, 24, 25))


def test_next_run_of_an_interval_is_one_interval_from_now() -> None:
    before = datetime.datetime.now(datetime.UTC)
    first, second = make_schedule(None, 7200).next_runs(2)
    assert before + datetime.timedelta(hours=2) <= first <= before + datetime.timedelta(hours=2, minutes=1)
    assert second - first == datetime.timedelta(hours=2)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--cron", "0 3 * * * *"], "error: --cron '0 3 * * * *': 6 fields"),
        (["--timezone", "utc"], "error: --timezone 'utc': not an IANA time zone; did you mean UTC?"),
        (["--interval", "inf"], "error: --interval inf: give a number of seconds"),  # was exit 1
        (["--name", "a/b"], "error: --name 'a/b': give a deployment name"),  # was a traceback
        (  # the deployment's parameters: in clear in the Prefect UI
            ["--set", "tracking.uri=postgresql://bitune:S3cret@db/mlflow"],
            "error: --set tracking.uri: its value holds a password, which Prefect would keep in clear",
        ),
    ],
)
def test_cli_refuses_in_one_line_with_exit_2_before_asking_the_server(
    args: list[str], expected: str, tmp_path: Path
) -> None:
    """PREFECT_API_URL points at nothing: the error is the schedule's, so it was checked first."""
    shutil.copytree(REPO / "params", tmp_path / "params")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": DEAD_SERVER}
    proc = subprocess.run(
        [str(BITUNE), "schedule", "--project", str(tmp_path), *args],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr
    first, *rest = proc.stderr.strip().splitlines()
    assert first.startswith(expected), proc.stderr
    assert rest == [f"(details in {tmp_path / '.bitune/logs/bitune.log'})"], proc.stderr
    assert proc.stdout == ""


def test_stopping_before_the_deployment_exists_says_nothing_about_pausing(
    prefect_db: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A signal while `bitune schedule` is still registering: no schedule exists yet, so there is
    nothing that could fire, and no "could not be paused" error may scare the user into the UI."""
    from flows.schedule import _pause_or_explain

    _pause_or_explain("never-registered")
    assert capsys.readouterr().err == ""


class SlowRegistration(http.server.BaseHTTPRequestHandler):
    """A Prefect API that is up (`/health`) but slow to register: it holds every other request
    open for a minute; the deployment lookup that a stop makes says there is none yet (404)."""

    held: list[str] = []  # the requests it is holding: registration has begun

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.endswith("/health"):
            self._answer(200, b"true")
        elif "/deployments/name/" in self.path:
            self._answer(404, b'{"detail": "Deployment not found"}')
        else:
            self.held.append(f"GET {self.path}")
            time.sleep(60)

    def do_POST(self) -> None:  # noqa: N802
        self.held.append(f"POST {self.path}")
        time.sleep(60)

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("stage", ["importing the flow", "registering"])
def test_ctrl_c_before_serving_starts_is_one_line_and_exit_130(stage: str, tmp_path: Path) -> None:
    """Ctrl-C while the flow is imported (seconds) or the deployment is being registered: once
    a bare exit 130 (Typer's handling of the interrupt, which says nothing) or asyncio's
    "Exception ignored in BaseEventLoop.__del__" tracebacks; neither said what was left."""
    SlowRegistration.held = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowRegistration)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    shutil.copytree(REPO / "params", tmp_path / "params")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{server.server_port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    proc = subprocess.Popen(
        [str(BITUNE), "schedule", "--project", str(tmp_path), "--name", "nightly-test"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("Serving retrain/nightly-test from")  # checks passed
        deadline = time.monotonic() + 60
        while stage == "registering" and not SlowRegistration.held:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        server.shutdown()
        server.server_close()
    assert proc.returncode == 130, err
    assert err.strip() == (
        "interrupted: retrain/nightly-test is not being served (its schedule, if it had one, is paused); "
        "`bitune schedule --name nightly-test` serves it again."
    )
    assert "Aborted" not in out + err


def test_a_pause_that_failed_is_not_retried_on_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM with the Prefect server down: the runner's own pause on shutdown retried against the
    dead server for 75 s after the one-line "could not be paused", then exited 1 with a traceback."""
    import asyncio
    import signal
    import types

    import flows.schedule as schedule

    def server_down(name: str) -> None:
        raise ConnectionError("All connection attempts failed")

    monkeypatch.setattr(schedule, "pause_served_deployment", server_down)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # leave the test process's handlers be
    runner = types.SimpleNamespace(started=True, pause_on_shutdown=True)
    loop = asyncio.new_event_loop()
    try:
        stop = schedule.StopServing("nightly", runner, loop)  # type: ignore[arg-type]
        stop(signal.SIGTERM, None)
    finally:
        loop.close()
    assert runner.pause_on_shutdown is False
    assert stop.pause_failed  # so the goodbye line does not say the schedule is paused


def test_the_server_gone_while_registering_is_a_one_line_error() -> None:
    """The server answered `require_api_server` and went away before the deployment was registered: this
    was Prefect's 120-line httpx traceback and exit 1."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.schedule import OrchestrationError, serve_retrain

    parameters = {
        "params_file": "params/default.yaml",
        "overrides": [],
        "project_dir": str(REPO),
        "force": False,
    }
    with temporary_settings({PREFECT_API_URL: DEAD_SERVER}), pytest.raises(OrchestrationError) as raised:
        serve_retrain("gone-test", make_schedule("0 3 * * *", None), parameters | {"force": False})
    assert str(raised.value) == (
        f"the Prefect server at {DEAD_SERVER} stopped answering while retrain/gone-test was being registered "
        "(ConnectError); start it again, then run `bitune schedule` again"
    )
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C works again afterwards
