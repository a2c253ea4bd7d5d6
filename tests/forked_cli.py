"""Many `bitune` command lines, each in a process forked from one that has imported the CLI already.

`bitune run` imports torch and transformers before it checks anything (5-10 s on a busy 2-core
machine), then a bad --set or --data fails in a fraction of a second. A catalogue of such inputs run
as one process each spends nearly all its time importing. Here the imports happen once; each command
line then runs as the console script would, in a child of its own: its own stdout and stderr files
(the real file descriptors, so anything any library prints is caught), its own exit status, atexit
handlers run. What the imports print goes to this process's stderr, which the caller checks is empty.

    python forked_cli.py JOBS.json   # JOBS: [{"argv": [...], "stdout": file, "stderr": file}, ...]

prints one JSON list: {"status": exit status, "seconds": wall time} for each job, in order.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

CHILD_TIMEOUT_S = 120


def import_the_cli() -> None:
    """What `bitune run` imports before its checks; only a speed-up (a module left out loads in the child)."""
    import bitune.data.versioning  # noqa: F401
    import bitune.model.hub_reachable  # noqa: F401
    import bitune.params  # noqa: F401
    import bitune.params.folders  # noqa: F401
    import bitune.project_lock  # noqa: F401
    import flows.cli  # noqa: F401
    import tasks.dvc_store  # noqa: F401


def exit_status(code: object) -> int:
    """What the interpreter makes of `SystemExit(code)`: None is 0, text is printed and is 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def run_in_child(argv: list[str], stdout: Path, stderr: Path) -> None:
    """Never returns: the console script's `sys.exit(app())`, its output on the job's files."""
    status = 1
    signal.alarm(CHILD_TIMEOUT_S)  # a hung command line dies (status -14) instead of stalling the batch
    try:
        for fd, path in ((1, stdout), (2, stderr)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        from flows.cli import app

        sys.argv = [str(Path(sys.executable).with_name("bitune")), *argv]
        try:
            app()
            status = 0
        except SystemExit as exc:
            status = exit_status(exc.code)
        except BaseException:  # noqa: BLE001 - as the interpreter would: the traceback, exit 1
            traceback.print_exc()
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def run_forked(argv: list[str], stdout: Path, stderr: Path) -> int:
    # a fork copies only the calling thread: locks other threads hold would stay locked in the child
    assert threading.active_count() == 1, f"threads before fork: {threading.enumerate()}"
    sys.stdout.flush()  # a child must not inherit unwritten output and write it into its own files
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        run_in_child(argv, stdout, stderr)
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status)


def main(jobs_file: Path) -> None:
    import_the_cli()
    results = []
    for job in json.loads(jobs_file.read_text()):
        started = time.monotonic()
        status = run_forked(job["argv"], Path(job["stdout"]), Path(job["stderr"]))
        results.append({"status": status, "seconds": round(time.monotonic() - started, 2)})
    print(json.dumps(results))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
