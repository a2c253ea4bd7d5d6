"""One retrain per project: a second one fails at once naming the holder; a dead holder frees it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bitune.project_lock import ProjectBusyError, hold_project

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
