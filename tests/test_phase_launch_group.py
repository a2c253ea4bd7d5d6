"""An interrupted distributed phase (flow run cancelled, SIGTERM, Ctrl-C) leaves no training process
behind: the launcher's children are stopped with it, not left holding the GPUs."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from tasks.phase_launch import run_process_group

# a launcher that starts a "rank" which ignores nothing and sleeps, as accelerate's ranks train on
LAUNCHER = """
import subprocess, sys, time
rank = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
open(sys.argv[1], "w").write(str(rank.pid))
time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split()[2] == "Z")  # a zombie is gone


def test_an_interrupt_stops_the_launcher_and_the_ranks_it_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "rank.pid"

    main = threading.main_thread().ident
    assert main is not None

    def interrupt_once_the_rank_runs() -> None:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        signal.pthread_kill(main, signal.SIGINT)  # a real signal: it must cut the wait short

    threading.Thread(target=interrupt_once_the_rank_runs, daemon=True).start()
    started = time.monotonic()
    with (tmp_path / "log").open("w") as log, pytest.raises(KeyboardInterrupt):
        run_process_group([sys.executable, "-c", LAUNCHER, str(pid_file)], tmp_path, dict(os.environ), log)
    rank = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while alive(rank) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(rank)
    assert time.monotonic() - started < 30  # SIGTERM sufficed: no waiting out the 120 s sleep


def test_a_finished_command_reports_its_exit_status(tmp_path: Path) -> None:
    with (tmp_path / "log").open("w") as log:
        code = run_process_group(
            [sys.executable, "-c", "print('rank'); raise SystemExit(3)"], tmp_path, {}, log
        )
    assert code == 3 and (tmp_path / "log").read_text() == "rank\n"
