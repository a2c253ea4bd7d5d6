"""One retrain per project: a second one fails at once naming the holder; a dead holder frees it.

`bitune run` asks (`check_project_free`) before it starts Prefect, and the flow takes the lock itself.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bitune.project_lock import LOCK_FILE, ProjectBusyError, check_project_free, hold_project

HOLDER = """
import sys, time
from pathlib import Path
from bitune.project_lock import hold_project
with hold_project(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(120)
"""


def start_holder(root: Path) -> subprocess.Popen[str]:
    """Another process (a scheduled run, say) that holds the project's lock."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_retrain_is_refused_while_the_first_holds_the_project(tmp_path: Path) -> None:
    holder = start_holder(tmp_path)
    try:
        busy = rf"retrain.lock: another retrain .* \(pid {holder.pid} on "
        with pytest.raises(ProjectBusyError, match=busy):
            with hold_project(tmp_path):
                pytest.fail("the lock was granted twice")
    finally:
        holder.send_signal(signal.SIGKILL)  # as a crash would: no clean release
        holder.wait()
    with hold_project(tmp_path):  # the kernel dropped the dead holder's lock: nothing stale remains
        assert str(os.getpid()) in (tmp_path / ".bitune" / "retrain.lock").read_text()
    with hold_project(tmp_path):  # and a released lock is free again in the same process
        pass


def outside_logs(root: Path) -> list[Path]:
    """Every path in the project but the error log (whose line is the point of a refusal)."""
    return sorted(p for p in root.rglob("*") if root / ".bitune" / "logs" not in (p, *p.parents))


def test_the_probe_names_the_holder_as_the_lock_does_and_holds_nothing(tmp_path: Path) -> None:
    check_project_free(tmp_path)  # never run here: free, and asking creates nothing
    assert list(tmp_path.iterdir()) == []
    holder = start_holder(tmp_path)
    try:
        with pytest.raises(ProjectBusyError) as probed:
            check_project_free(tmp_path)
        with pytest.raises(ProjectBusyError) as locked:
            with hold_project(tmp_path):
                pytest.fail("the lock was granted twice")
        assert str(probed.value) == str(locked.value)
        assert f"(pid {holder.pid} on " in str(probed.value)
    finally:
        holder.kill()
        holder.wait()
    check_project_free(tmp_path)  # the dead holder's lock went with it
    with hold_project(tmp_path):  # and the probe left no lock of its own behind
        with pytest.raises(ProjectBusyError, match=rf"\(pid {os.getpid()} on "):
            check_project_free(tmp_path)


def test_a_retrain_that_starts_during_a_probe_still_gets_the_lock(tmp_path: Path) -> None:
    """A probe holds a shared lock for an instant; a retrain starting then must not call the project busy."""
    with hold_project(tmp_path):
        pass  # the lock file exists
    with open(tmp_path / LOCK_FILE) as probe:
        fcntl.flock(probe.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)  # as check_project_free does
        release = threading.Timer(0.1, fcntl.flock, (probe.fileno(), fcntl.LOCK_UN))
        release.start()
        try:
            with hold_project(tmp_path):
                assert str(os.getpid()) in (tmp_path / LOCK_FILE).read_text()
        finally:
            release.join()


def test_bitune_run_on_a_held_project_fails_before_prefect_starts(tmp_path: Path) -> None:
    """Without PREFECT_API_URL the flow would start Prefect's temporary server (15-20 s) and only then
    find the lock: the CLI asks first, so the refusal is immediate and Prefect never starts."""
    from conftest import make_project

    project = make_project(tmp_path / "project", Path())
    prefect_home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(prefect_home), "HF_HUB_OFFLINE": "1"}
    holder = start_holder(project)
    try:
        before = outside_logs(project)
        started = time.monotonic()
        bitune = Path(sys.executable).with_name("bitune")
        proc = subprocess.run(
            [str(bitune), "run", "--project", str(project)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        seconds = time.monotonic() - started
        with pytest.raises(ProjectBusyError) as in_flow:  # what the flow's own lock says
            with hold_project(project):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2, proc.stderr[-3000:]
    error, details = proc.stderr.strip().splitlines()
    assert error == f"error: {in_flow.value}" and details.startswith("(details in ")
    assert f"pid {holder.pid}" in error
    assert not prefect_home.exists()  # no Prefect server or database was started
    assert outside_logs(project) == before  # no data version, no MLflow store
    assert seconds < 10, seconds  # an interpreter start and the params check; Prefect's start is 15 s or more
