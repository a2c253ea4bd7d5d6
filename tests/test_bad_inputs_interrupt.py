"""Ctrl-C in a terminal: SIGINT to the whole foreground process group, Prefect's temporary server too.

Found in an audit: the temporary server stopped with the run, so the interrupted run could not
record its end; it retried for two minutes and failed with "unexpected ConnectError ... a bug in
bitune", exit 1. tests/test_crash_resume.py signals the bitune process alone, with a shared server.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time

import pytest
from conftest import make_project
from test_crash_resume import command, runs, wait_for_bottom_epoch

from flows.cli import left_after_interrupt

pytestmark = pytest.mark.slow


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_ctrl_c_in_the_bottom_phase_ends_in_one_line_and_a_rerun_resumes(tmp_path, tiny_bert_dir) -> None:  # type: ignore[no-untyped-def]
    root = make_project(tmp_path / "project", tiny_bert_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}  # its own server
    proc = subprocess.Popen(
        command(root, tiny_bert_dir),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # a process group of its own, as a terminal's foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509
    )
    try:
        wait_for_bottom_epoch(root, proc, 2)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does
        started = time.monotonic()
        out, err = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    seconds = time.monotonic() - started
    stderr = err.decode()
    assert proc.returncode == 130, stderr[-3000:]
    assert seconds < 60, seconds  # not two minutes of retries against a server that is gone
    lines = [line for line in stderr.splitlines() if line.startswith(("interrupted:", "error:"))]
    assert len(lines) == 1 and lines[0].startswith("interrupted: the MLflow run is marked KILLED; "), lines
    assert lines[0].endswith("run again to resume from the last checkpoint"), lines
    assert "ERROR" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    port = int(re.search(r"Starting temporary server on http://127\.0\.0\.1:(\d+)", stderr).group(1))  # type: ignore[union-attr]
    assert not listening(port)  # the detached server still stops when bitune ends
    assert {r.info.status for r in runs(root)} == {"KILLED", "FINISHED"}  # the head phase had finished

    rerun = subprocess.run(command(root, tiny_bert_dir), env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]  # the lock went with the interrupted process
    resumed = re.search(r"bottom: resuming from the checkpoint after epoch \d+ of 30", rerun.stderr)
    assert resumed, rerun.stderr[-3000:]


def test_an_interrupted_force_run_does_not_promise_a_plain_rerun_resumes_it() -> None:
    """--force clears the pipeline's checkpoints when it starts; a plain run may find nothing to do."""
    said = left_after_interrupt("aaaaaaaa11.dir", "aaaaaaaa11.dir", force=True)
    assert said == (
        "data, registry and champion are unchanged; bitune run --force starts over; a plain bitune run "
        "resumes, or does nothing if an earlier run already trained this data with these params"
    )
