"""`bitune ui` and `bitune serve` on a busy port, and `bitune ui` stopped by SIGTERM or SIGHUP.

A README audit found a busy port reported as uvicorn's `[Errno 98]` with exit 0 (`ui`) or a 25-line
MLflow traceback (`serve`), and `kill` or a closed terminal leaving `mlflow ui` holding the port:
it runs in a session of its own, which those signals never reach. A `kill -9` of bitune, which no
handler sees, stops it too (the server is tethered: `bitune/process_tether.py`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO, make_project
from loopback_server import free_port, server_in_own_group, venv_first_path, wait_until_up
from mlflow.tracking import MlflowClient

BITUNE = Path(sys.executable).parent / "bitune"
NAME = "bitune-classifier"  # params/default.yaml registry.model_name


def bitune(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BITUNE), *args, "--project", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PATH": venv_first_path(), "COLUMNS": "300"},
    )


@pytest.fixture
def held_port() -> Iterator[int]:
    """A loopback port another program listens on for the test's length."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield int(other.getsockname()[1])


def ui_project(root: Path) -> Path:
    root.mkdir()
    (root / "params").symlink_to(Path(REPO) / "params")
    MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").create_experiment("bitune")
    return root


def test_ui_on_a_busy_port_is_one_line_and_exit_2(tmp_path: Path, held_port: int) -> None:
    root = ui_project(tmp_path / "project")
    proc = bitune(root, "ui", "--port", str(held_port))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == f"error: port {held_port} on 127.0.0.1 is in use (another `bitune ui`?); pass --port N"
    assert len(lines) == 2 and lines[1].startswith("(details in "), proc.stderr
    assert "MLflow UI on" not in proc.stdout  # refused before it said it started


def test_serve_on_a_busy_port_is_one_line_and_exit_2(tmp_path: Path, held_port: int) -> None:
    root = make_project(tmp_path / "project", Path())
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    client.create_registered_model(NAME)
    (root / "model").mkdir()
    version = client.create_model_version(NAME, source=(root / "model").as_uri()).version
    client.set_registered_model_alias(NAME, "champion", str(version))

    proc = bitune(root, "serve", "--port", str(held_port))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines[0] == (
        f"error: port {held_port} on 127.0.0.1 is in use (another `bitune serve`?); pass --port N"
    )
    assert len(lines) == 2 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    assert "Serving" not in proc.stdout


def processes() -> dict[int, tuple[int, int]]:
    """Every live process: pid to (parent pid, process group)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        if fields[0] != "Z":
            found[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return found


def answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=["SIGTERM", "SIGHUP", "SIGKILL"]
)
def test_a_stop_signal_to_bitune_stops_the_ui_server_too(tmp_path: Path, sig: signal.Signals) -> None:
    root = ui_project(tmp_path / "project")
    port, log = free_port(), tmp_path / "ui.log"
    env = {**os.environ, "PATH": venv_first_path()}
    command = [str(BITUNE), "ui", "--port", str(port), "--project", str(root)]
    with server_in_own_group(command, cwd=tmp_path, env=env, log=log) as proc:
        wait_until_up(f"http://127.0.0.1:{port}/health", proc, log, "bitune ui", 120)
        # the server bitune started, in a group of its own (not bitune's)
        groups = {group for pid, (parent, group) in processes().items() if parent == proc.pid}
        assert groups and proc.pid not in groups, groups
        os.kill(proc.pid, sig)  # bitune alone, as `kill` or a closing terminal's SIGHUP to its leader
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"bitune ui still running 60 s after {sig.name}:\n{log.read_text()[-3000:]}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
            answers(port) or any(group in groups for _, group in processes().values())
        ):
            time.sleep(0.5)
    left = {pid for pid, (_, group) in processes().items() if group in groups}
    for group in groups if left else ():  # a failing run leaves nothing behind for the next test
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    assert not left, f"server processes left running after {sig.name}: {left}"
    assert not answers(port), f"port {port} still answers after {sig.name}"
    if sig != signal.SIGKILL:  # -9 runs nothing in bitune: the kernel stops the server (tethered)
        assert log.read_text().rstrip().endswith("MLflow UI stopped."), log.read_text()[-2000:]
