"""`tethered`: a child that bitune starts in a session of its own dies when bitune is killed -9.

Real processes: a middleman Python process starts the child (as bitune starts Prefect's server),
prints its pid and is killed with SIGKILL; the child must be gone within seconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from bitune.process_tether import tethered

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

MIDDLEMAN = """
import subprocess, sys, time
from bitune.process_tether import tethered
command = ["sleep", "120"]
child = subprocess.Popen(tethered(command) if sys.argv[1] == "tethered" else command, start_new_session=True)
print(child.pid, flush=True)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def child_after_middleman_killed(mode: str) -> tuple[int, bool]:
    """(child pid, whether it still runs 5 s after its parent got SIGKILL)."""
    middleman = subprocess.Popen([sys.executable, "-c", MIDDLEMAN, mode], stdout=subprocess.PIPE, text=True)
    assert middleman.stdout is not None
    child = int(middleman.stdout.readline())
    deadline = time.monotonic() + 10
    while not open(f"/proc/{child}/cmdline", "rb").read().startswith(b"sleep\0"):
        assert time.monotonic() < deadline, "the child never became `sleep`"
        time.sleep(0.05)  # the tether execs into sleep once it is set: kill the parent after that
    middleman.kill()
    middleman.wait()
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    return child, alive(child)


def test_a_tethered_child_dies_with_its_parent_killed_by_sigkill() -> None:
    child, still_running = child_after_middleman_killed("tethered")
    assert not still_running, f"tethered child {child} outlived its parent"


def test_without_the_tether_the_child_outlives_its_parent() -> None:
    """The control: the same child, untethered, is an orphan the test has to stop itself."""
    child, still_running = child_after_middleman_killed("plain")
    try:
        assert still_running
    finally:
        os.kill(child, signal.SIGKILL)


def test_the_command_keeps_its_pid_arguments_and_exit_status() -> None:
    proc = subprocess.Popen(
        tethered(["sh", "-c", 'echo "$$ $0 $1"; exit 7', "zero", "one two"]),
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = proc.communicate(timeout=30)
    assert out.split(" ", 1) == [str(proc.pid), "zero one two\n"]
    assert proc.returncode == 7


def test_the_command_gets_the_signal_dispositions_python_changed_back() -> None:
    """Python ignores SIGPIPE and SIGXFSZ, and ignored signals survive exec: reset, so that
    `yes | head -1` ends as it does in a shell instead of writing into a closed pipe for ever."""
    ignored = subprocess.run(
        tethered(["grep", "SigIgn", "/proc/self/status"]), capture_output=True, text=True
    )
    mask = int(ignored.stdout.split()[1], 16)
    assert not mask & (1 << (signal.SIGPIPE - 1)), ignored.stdout
    assert not mask & (1 << (signal.SIGXFSZ - 1)), ignored.stdout


def test_runs_from_a_checkout_that_is_not_installed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Run by path with the standard library only: an interpreter without bitune runs it too (here
    the one the virtual environment was made from, which has no bitune installed)."""
    command = tethered(["sh", "-c", "echo ok"])
    command[0] = sys._base_executable  # the venv's base interpreter, without the venv's packages
    check = subprocess.run(
        [command[0], "-c", "import bitune"], capture_output=True, cwd=tmp_path, check=False
    )
    assert check.returncode != 0, "the base interpreter has bitune: this test would prove nothing"
    proc = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}
    )
    assert (proc.returncode, proc.stdout) == (0, "ok\n"), proc.stderr


def test_a_parent_that_is_already_gone_starts_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The parent died between fork and tether (here: pid 0 is never a parent): no orphan starts."""
    marker = tmp_path / "started"
    proc = subprocess.run(tethered(["touch", str(marker)], parent_pid=0), capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "parent process 0 is gone; not starting touch"
    assert not marker.exists()
