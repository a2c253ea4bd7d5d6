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


class ProjectBusyError(BituneError):
    """Another retrain holds this project."""


@contextmanager
def hold_project(root: Path) -> Iterator[None]:
    """Hold the project's retrain lock for the block, or fail at once naming who holds it."""
    path = root / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            raise ProjectBusyError(
                f"{path}: another retrain of this project is running ({_describe(handle.read())}); "
                "wait for it to finish, or run in another project folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _describe(content: str) -> str:
    try:
        holder = json.loads(content)
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(holder["since"])))
        return f"pid {holder['pid']} on {holder['host']}, since {started}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown"
