"""`bitune ui` ends on Ctrl-C without tracebacks: a README walkthrough found eight, one from each of
the job-runner processes MLflow's server starts by default."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from loopback_server import free_port, server_in_own_group, venv_first_path, wait_until_up
from mlflow.tracking import MlflowClient

BITUNE = Path(sys.executable).parent / "bitune"


@pytest.mark.slow
def test_ctrl_c_stops_the_ui_without_tracebacks(tmp_path: Path) -> None:
    (tmp_path / "params").symlink_to(Path(REPO) / "params")
    MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").create_experiment("bitune")
    port, log = free_port(), tmp_path / "ui.log"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"}
    env["PATH"] = venv_first_path()
    command = [str(BITUNE), "ui", "--port", str(port), "--project", str(tmp_path)]
    with server_in_own_group(command, cwd=tmp_path, env=env, log=log) as proc:
        wait_until_up(f"http://127.0.0.1:{port}/health", proc, log, "bitune ui", 120)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: the whole group
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"bitune ui still running 60 s after Ctrl-C:\n{log.read_text()[-3000:]}")
    out = log.read_text()
    assert "Traceback" not in out, out[-3000:]
    assert f"MLflow UI on http://127.0.0.1:{port}" in out
    assert out.rstrip().endswith("MLflow UI stopped."), out[-1000:]
    assert proc.returncode == 0
    pgrep = ["pgrep", "-f", "--", f"--port {port}"]
    left = subprocess.run(pgrep, capture_output=True, text=True, check=False)
    assert left.returncode == 1, f"server processes left running (pgrep {left.returncode}): {left.stdout}"
