"""`train.timeout_minutes`: a retrain that runs past its limit is stopped the way SIGTERM stops it.

Why not Prefect's own `timeout_seconds`: it is fixed when the flow is defined, while this limit is a
param that each run reads from its params file (a scheduled run loads the flow afresh from its
entrypoint, so a `with_options` made when serving never reaches it); in 3.8.8 it raises Prefect's
`CancelledError`, which no interrupt handler here knows (the MLflow run would end FAILED, not
KILLED); and its message names seconds, not the key to change. Its mechanism is sound and is the one
used here: SIGALRM in the main thread, whose handler raises, interrupts blocking calls too (a read
that never returns, the wait on a distributed phase's launcher).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType, TracebackType

from bitune.errors import BituneError

log = logging.getLogger("bitune")

REDELIVER_S = 0.05


class DeadlinePassed(KeyboardInterrupt):
    """Raised in the main thread when the limit passes.

    A KeyboardInterrupt, so it takes the path Ctrl-C and SIGTERM take: the MLflow runs are closed
    KILLED, a distributed phase's processes are stopped, the project lock is released, and no
    library's `except Exception` swallows it.
    """


class RunTimeoutError(BituneError):
    """The run passed train.timeout_minutes and was stopped; what the caller and Prefect are told."""


class RunDeadline:
    """`with RunDeadline(minutes):` interrupts the block once `minutes` have passed (None: never).

    An interrupt that Python drops because it landed in a finalizer ("Exception ignored in ...") is
    raised again a moment later, as the CLI does for Ctrl-C: a scheduled run has no CLI.
    """

    def __init__(self, minutes: float | None) -> None:
        self.minutes = minutes
        self.passed = False
        self._armed = False

    def __enter__(self) -> RunDeadline:
        if self.minutes is None:
            return self
        if threading.current_thread() is not threading.main_thread():  # signals reach only the main thread
            log.warning(
                "train.timeout_minutes=%g is not enforced: the flow runs outside the main thread",
                self.minutes,
            )
            return self
        self._previous_handler = signal.signal(signal.SIGALRM, self._deliver)
        self._previous_hook = sys.unraisablehook
        sys.unraisablehook = self._redeliver
        self._armed = True
        signal.setitimer(signal.ITIMER_REAL, self.minutes * 60)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._armed:
            return
        self._armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous_handler)
        sys.unraisablehook = self._previous_hook

    def _deliver(self, signum: int, frame: FrameType | None) -> None:
        if not self._armed:  # the block ended as the alarm went off
            return
        self.passed = True
        raise DeadlinePassed(f"train.timeout_minutes={self.minutes:g} passed")

    def _redeliver(self, unraisable: sys.UnraisableHookArgs) -> None:
        if issubclass(unraisable.exc_type, DeadlinePassed) and self._armed:
            signal.setitimer(signal.ITIMER_REAL, REDELIVER_S)
            return
        self._previous_hook(unraisable)

    def describe(self, params_file: str, overrides: list[str]) -> str:
        """The one line for a run this deadline stopped: the key, its value, where to raise it."""
        set_here = any(o.split("=", 1)[0].strip() == "train.timeout_minutes" for o in overrides)
        where = "with --set train.timeout_minutes=..." if set_here else f"in {params_file}"
        return (
            f"retrain ran past train.timeout_minutes={self.minutes:g} and was stopped (MLflow runs KILLED, "
            f"checkpoints kept: the next run resumes from them); raise it {where} or find what hung"
        )
