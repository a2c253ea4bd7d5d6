"""One retrain per project at a time.

A manual `bitune run` and a scheduled one (or two schedules) on the same project folder would share
data/, the phase checkpoints and the MLflow runs of one pipeline key: the second would close the
first's live runs as stale and train into its checkpoint folder. An advisory `flock` on a file in
`.bitune/` keeps them apart; the kernel drops it when its process ends, so a crash or `kill -9`
never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bitune.errors import BituneError

LOCK_FILE = Path(".bitune") / "retrain.lock"


# A probe (`check_project_free`) holds the lock for microseconds; a retrain that starts in that
# instant tries again for this long before it calls the project busy.
PROBE_GRACE_S = 0.5


class ProjectBusyError(BituneError):
    """Another retrain holds this project."""


@contextmanager
def hold_project(root: Path) -> Iterator[None]:
    """Hold the project's retrain lock for the block, or fail (after PROBE_GRACE_S) naming who holds it."""
    path = root / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + PROBE_GRACE_S
        while not _try_lock(handle.fileno(), fcntl.LOCK_EX):
            if time.monotonic() >= deadline:
                handle.seek(0)
                raise _busy(path, handle.read())
            time.sleep(0.05)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def check_project_free(root: Path) -> None:
    """Fail as `hold_project` would if another process holds the project; hold nothing, create nothing.

    `bitune run` asks this before it starts Prefect (seconds), so a busy project is refused at once;
    the flow still takes the lock itself, since a scheduled run comes through no CLI.
    """
    path = root / LOCK_FILE
    try:
        handle = open(path)  # read-only: no file, no holder, and nothing written for asking
    except FileNotFoundError:
        return
    with handle:
        if not _try_lock(handle.fileno(), fcntl.LOCK_SH):
            raise _busy(path, handle.read())
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _try_lock(fd: int, kind: int) -> bool:
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _busy(path: Path, holder: str) -> ProjectBusyError:
    return ProjectBusyError(
        f"{path}: another retrain of this project is running ({_describe(holder)}); "
        "wait for it to finish, or run in another project folder"
    )


def _describe(content: str) -> str:
    try:
        holder = json.loads(content)
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(holder["since"])))
        return f"pid {holder['pid']} on {holder['host']}, since {started}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
