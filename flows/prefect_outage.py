"""`bitune schedule` outlasts its Prefect server going away: it says so in one line, keeps serving, and
says when the server is back.

Prefect's runner polls the server in two loops, one for the runs that come due and one watching for
cancellations ("Cancel" in the UI). Both run in Prefect's `critical_service_loop`, which gives up after
three failed polls: it prints the polls' tracebacks, and the loop ends for good. Found in an audit: a
Prefect server restarted for an upgrade left `bitune schedule` alive but serving nothing (no run came due
again until it was restarted by hand), after about two hundred lines of tracebacks.

Here both loops run in `outlasting_service_loop` instead: the same polling, but a poll the server does
not answer is only noted, and polling goes on at the same pace. Prefect 3.8.8 (pinned) names the loop in
those two private modules; `tests/test_schedule_outage.py` stops and restarts a real server under a real
`bitune schedule`, so a Prefect upgrade that moves them fails there, not in a user's night.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import httpx
from prefect._internal import observers
from prefect.runner import _scheduled_run_poller
from prefect.utilities.services import critical_service_loop

# Prefect's runner logger: its console handler prints these beside the runner's own lines. Not "bitune",
# which Prefect also sends to its API, and which warns when there is no flow run to send them to.
log = logging.getLogger("prefect.runner")
OBSERVER = "FlowRunCancellingObserver"


class ServerOutage:
    """Says once that the server is away, and once that it is back; shared by both loops."""

    def __init__(self, api_url: str) -> None:
        self.api_url = api_url
        self.away_since: float | None = None

    def lost(self, exc: BaseException) -> None:
        if self.away_since is None:
            self.away_since = time.monotonic()
            log.warning(
                "the Prefect server at %s does not answer (%s); still serving: runs that come due start "
                "once it is back",
                self.api_url,
                type(exc).__name__,
            )

    def answered(self) -> None:
        if self.away_since is not None:
            log.warning("the Prefect server answers again (away %.0f s)", time.monotonic() - self.away_since)
            self.away_since = None


def _unanswered(exc: BaseException) -> bool:
    """No answer, or the server's own failure (a 5xx while it restarts): worth polling again."""
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500
    return isinstance(exc, OSError | httpx.TransportError)


def outlasting_loop(
    outage: ServerOutage, *, ends_on_cancel: bool = False
) -> Callable[..., Coroutine[Any, Any, None]]:
    """`critical_service_loop`'s signature and pace, without the giving up.

    `ends_on_cancel`: for the cancellation watch, whose done-callback asks a cancelled task for its
    exception, which raises (prefect 3.8.8) and printed an asyncio traceback at every shutdown once the
    watch outlived its first outage. Cancelled, that loop returns instead; its owner awaits it and
    moves on either way.
    """

    async def loop(
        workload: Callable[..., Coroutine[Any, Any, Any]],
        interval: float,
        *args: Any,
        run_once: bool = False,
        jitter_range: float | None = None,
        **kwargs: Any,
    ) -> None:
        try:
            await _poll(workload, interval, run_once, jitter_range or 0.0, outage)
        except asyncio.CancelledError:
            if not ends_on_cancel:
                raise

    return loop


async def _poll(
    workload: Callable[..., Coroutine[Any, Any, Any]],
    interval: float,
    run_once: bool,
    jitter: float,
    outage: ServerOutage,
) -> None:
    while True:
        try:
            await workload()
        except Exception as exc:
            if not _unanswered(exc):
                raise
            outage.lost(exc)
        else:
            outage.answered()
        if run_once:
            return
        await anyio.sleep(interval * random.uniform(1 - jitter, 1 + jitter))


class WebsocketLost(logging.Filter):
    """The cancellation watch's websocket dropping with the server is the outage, said once already;
    its traceback (and anything else from the watch failing to connect) is not shown again."""

    def filter(self, record: logging.LogRecord) -> bool:
        if OBSERVER not in record.name:
            return True
        exc = record.exc_info[1] if record.exc_info else None
        return not (exc is not None and _unanswered(exc))


def outlast_outages(api_url: str) -> ServerOutage:
    """Put both of the runner's polling loops on `outlasting_loop`, and quiet the websocket's drop."""
    outage = ServerOutage(api_url)
    for module, ends_on_cancel in ((observers, True), (_scheduled_run_poller, False)):
        if getattr(module, "critical_service_loop", None) is critical_service_loop:
            module.critical_service_loop = outlasting_loop(outage, ends_on_cancel=ends_on_cancel)  # type: ignore[attr-defined]
    quiet = WebsocketLost()
    for name in ("", "prefect"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, WebsocketLost) for f in handler.filters):
                handler.addFilter(quiet)
    return outage
