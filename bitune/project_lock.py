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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bitune.errors import BituneError

LOCK_FILE = Path(".bitune") / "retrain.lock"


class ProjectBusyError(BituneError):
    """Another retrain holds this project."""


# Projects this process holds, with how deep: `bitune run` takes the lock before Prefect starts (so a
# second run is refused in a second, not after Prefect's server took seconds) and the flow it runs
# takes it again; flock locks belong to an open file, so a second open in one process would conflict.
_held: dict[Path, int] = {}
_held_guard = threading.Lock()


@contextmanager
def hold_project(root: Path) -> Iterator[None]:
    """Hold the project's retrain lock for the block, or fail at once naming who holds it.

    Re-entrant within a process: a block inside another for the same project just goes on.
    """
    key = root.resolve()
    with _held_guard:
        nested = key in _held
        if nested:
            _held[key] += 1
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    path = key / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        if not _try_lock(handle.fileno(), fcntl.LOCK_EX):
            handle.seek(0)
            raise _busy(path, handle.read())
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
        handle.flush()
        with _held_guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _held_guard:
                del _held[key]
            handle.truncate(0)
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
