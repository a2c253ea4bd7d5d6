"""Ctrl-C must stop a run even when its KeyboardInterrupt lands in a finalizer.

Found in a README walkthrough: `timeout -s INT 40 bitune run --force` printed "Exception ignored in:
<function WeakKeyDictionary...remove> ... KeyboardInterrupt" and the run went on to register version
6 and exit 0. Python drops an exception raised in a weakref callback or `__del__`; the CLI's
unraisable hook delivers the interrupt again.
"""

from __future__ import annotations

import signal
import sys
import time
import weakref

import pytest

from flows.cli import stop_on_signals


class Tensor:
    """Anything a weakref callback watches (torch and Prefect keep such callbacks)."""


def test_an_interrupt_swallowed_by_a_finalizer_is_delivered_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored after the test
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        stop_on_signals()

        def finalizer(_ref: object) -> None:
            raise KeyboardInterrupt  # where the signal's exception landed

        tensor = Tensor()
        watched = [weakref.ref(tensor, finalizer)]
        with pytest.raises(KeyboardInterrupt):
            del tensor  # Python prints "Exception ignored" and would go on training...
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # ...so the interrupt must come back within the loop
                time.sleep(0.01)
        assert watched[0]() is None  # the finalizer did run
    finally:
        signal.signal(signal.SIGTERM, sigterm)


def test_other_unraisable_exceptions_still_reach_the_previous_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[type[BaseException]] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: seen.append(unraisable.exc_type))
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        stop_on_signals()

        def finalizer(_ref: object) -> None:
            raise ValueError("a library's own finalizer bug")

        tensor = Tensor()
        watched = [weakref.ref(tensor, finalizer)]
        del tensor
        time.sleep(0.2)  # no interrupt follows
        assert seen == [ValueError] and watched[0]() is None
    finally:
        signal.signal(signal.SIGTERM, sigterm)
