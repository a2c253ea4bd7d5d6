"""Children that die with the process that started them, even when it is killed with -9.

bitune starts long-lived children in sessions of their own (Prefect's temporary server, a
distributed phase's launcher) so that Ctrl-C in a terminal reaches only bitune, which then stops
them in order. The cost: a `kill -9` of bitune, or the kernel's OOM killer, left them running
for ever (found in the crash-resume test: one uvicorn server leaked per run). Linux's
`PR_SET_PDEATHSIG` asks the kernel to send a signal to a process when its parent dies; it survives
`exec`, so `tethered(command)` runs the command through this module, which sets it and then
execs the command in its own place: same pid, same arguments, environment and exit status.

Where `prctl` does not exist (macOS) the command runs untethered, as it did before.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@functools.cache
def _prctl() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """libc's prctl, from the symbols already loaded (no `find_library`: it runs ldconfig in a
    subprocess, and this is called while bitune has patched `subprocess.Popen`)."""
    if not sys.platform.startswith("linux"):
        return None
    return getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)


def tethered(command: list[str], parent_pid: int | None = None) -> list[str]:
    """`command`, run so that it gets SIGTERM when `parent_pid` (this process) dies.

    The kernel ties the signal to the *thread* that forks the child: start it from a thread that
    lives as long as the child should (bitune's main thread).
    """
    if _prctl() is None:
        return list(command)
    parent = os.getpid() if parent_pid is None else parent_pid
    # run by path, stdlib only: works from a checkout that is not installed; -P: nothing from cwd
    return [sys.executable, "-P", os.path.abspath(__file__), str(parent), *command]


def main(argv: list[str]) -> None:
    """`python process_tether.py PARENT_PID COMMAND...`: tether, then become COMMAND."""
    if len(argv) < 2:
        raise SystemExit("usage: python process_tether.py PARENT_PID COMMAND [ARGS...]")
    parent, command = int(argv[0]), argv[1:]
    prctl = _prctl()
    if prctl is not None and prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        raise SystemExit(f"prctl(PR_SET_PDEATHSIG) failed: {os.strerror(ctypes.get_errno())}")
    if os.getppid() != parent:  # the parent died before the tether was set: nobody would signal us
        raise SystemExit(f"parent process {parent} is gone; not starting {command[0]}")
    for ignored_by_python in (signal.SIGPIPE, signal.SIGXFSZ):  # ignored signals survive exec
        signal.signal(ignored_by_python, signal.SIG_DFL)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
