"""One retrain per project: a second one fails at once naming the holder; a dead holder frees it.

`bitune run` takes the lock before it starts Prefect and holds it to the end; the flow it runs takes it
again (re-entrant in one process), and a scheduled run, which comes through no CLI, takes it in the flow.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bitune.project_lock import LOCK_FILE, ProjectBusyError, hold_project

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


def test_the_lock_is_re_entrant_in_one_process_and_held_until_the_outer_block_ends(tmp_path: Path) -> None:
    with hold_project(tmp_path):
        with hold_project(tmp_path):  # the flow inside `bitune run` takes it again
            assert str(os.getpid()) in (tmp_path / LOCK_FILE).read_text()
        # the inner block's end does not release it: another process is still refused
        probe = subprocess.run(
            [sys.executable, "-c", HOLDER, str(tmp_path)], capture_output=True, text=True, timeout=60
        )
        assert probe.returncode != 0 and f"(pid {os.getpid()} on " in probe.stderr
    holder = start_holder(tmp_path)  # and the outer block's end does
    holder.kill()
    holder.wait()


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


def test_bitune_run_holds_the_project_before_prefect_starts(tmp_path: Path) -> None:
    """No window for a second run: the lock names `bitune run` before Prefect is even imported (its
    home folder does not exist yet), not only once the flow starts after Prefect's server (seconds)."""
    from conftest import make_project

    project = make_project(tmp_path / "project", Path())
    prefect_home = tmp_path / "prefect-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(prefect_home), "HF_HUB_OFFLINE": "1"}
    bitune = Path(sys.executable).with_name("bitune")
    proc = subprocess.Popen(
        [str(bitune), "run", "--project", str(project)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    lock = project / LOCK_FILE
    try:
        deadline = time.monotonic() + 60
        while f'"pid": {proc.pid}' not in (lock.read_text() if lock.is_file() else ""):
            assert proc.poll() is None, f"bitune run exited with {proc.returncode} before taking the lock"
            assert time.monotonic() < deadline, "bitune run never took the project lock"
            time.sleep(0.01)
        assert not prefect_home.exists(), "the lock was taken only after Prefect started"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
