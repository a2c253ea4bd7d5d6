"""Serving the `retrain` flow on a schedule: a Prefect deployment, and a runner in this process.

The schedule lives on a Prefect server: its scheduler creates the runs, this process's runner starts
each one as a subprocess. Prefect's temporary local server (what `bitune run` starts when no server
is configured) has no scheduler worth the name and dies with the process, so serving against it is
refused. Two retrains never overlap: the deployment carries a concurrency limit of 1, and a run that
comes due while another is still training is cancelled by the server (it would train on the same
data version), shown as Cancelled with "Deployment concurrency limit reached.". A run that hangs would
hold that one slot for good: `train.timeout_minutes` (read by each run from its params file) stops it.
"""

from __future__ import annotations

import datetime
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.types.entrypoint import EntrypointType
from pydantic import ValidationError

from bitune.errors import BituneError

DEFAULT_CRON = "0 3 * * *"
DESCRIPTION = "Retrain the classifier on the current data version; promote it if it beats the champion"
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
START_SERVER_HINT = (
    "run `prefect server start` (or the compose stack, docs/production.md) and "
    "`export PREFECT_API_URL=http://127.0.0.1:4200/api`"
)


class OrchestrationError(BituneError):
    """The Prefect server is missing, unreachable, or refused the schedule."""


@dataclass(frozen=True)
class RetrainSchedule:
    """When the retrain runs: a cron line (in `timezone`) or a fixed interval in seconds."""

    cron: str | None = None
    interval_seconds: float | None = None
    timezone: str = "UTC"

    def to_prefect(self) -> CronSchedule | IntervalSchedule:
        """The Prefect schedule object; a bad cron line or time zone is a one-line error."""
        try:
            if self.interval_seconds is not None:
                return IntervalSchedule(
                    interval=datetime.timedelta(seconds=self.interval_seconds), timezone=self.timezone
                )
            return CronSchedule(cron=self.cron or DEFAULT_CRON, timezone=self.timezone)
        except ValidationError as exc:
            detail = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise OrchestrationError(
                f"schedule {self.describe()}: {detail[:160]}; give a cron line like "
                f"'{DEFAULT_CRON}' and an IANA time zone like UTC"
            ) from None

    def describe(self) -> str:
        if self.interval_seconds is not None:
            return f"every {self.interval_seconds:g} s"
        return f"cron {self.cron or DEFAULT_CRON} ({self.timezone})"


def make_schedule(cron: str | None, interval_seconds: float | None, timezone: str = "UTC") -> RetrainSchedule:
    """Exactly one of `cron` and `interval_seconds`; neither means the nightly default."""
    if cron is not None and interval_seconds is not None:
        raise OrchestrationError("--cron and --interval both given; choose one schedule")
    if interval_seconds is not None and interval_seconds <= 0:
        raise OrchestrationError(f"--interval {interval_seconds:g}: must be a positive number of seconds")
    schedule = RetrainSchedule(cron, interval_seconds, timezone)
    schedule.to_prefect()  # validate now, before anything is registered
    return schedule


def require_api_server() -> str:
    """The configured Prefect API URL, after checking a server answers there.

    Reads PREFECT_API_URL the way Prefect does (environment, then the active profile).
    """
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise OrchestrationError(
            "PREFECT_API_URL is not set: a schedule needs a running Prefect server (the temporary "
            f"one `bitune run` starts has no scheduler); {START_SERVER_HINT}"
        )
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise OrchestrationError(
            f"PREFECT_API_URL={url}: no Prefect server answers ({type(problem).__name__}); "
            + START_SERVER_HINT
        )
    return str(url)


def deployment_parameters(params_file: Path, overrides: list[str], project: Path) -> dict[str, Any]:
    """The `retrain` arguments every scheduled run gets; paths are made to work from any cwd."""
    root = project.resolve()
    params = params_file if params_file.is_absolute() else root / params_file
    try:
        shown = str(params.resolve().relative_to(root))  # readable in the UI when inside the project
    except ValueError:
        shown = str(params.resolve())
    return {"params_file": shown, "overrides": list(overrides), "project_dir": str(root), "force": False}


def pause_served_deployment(name: str) -> None:
    """Pause `retrain/<name>`: nothing may come due while no runner serves it (idempotent)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.pause_deployment(client.read_deployment_by_name(f"retrain/{name}").id)


def _pause_or_explain(name: str) -> None:
    try:
        pause_served_deployment(name)
    except Exception as exc:  # noqa: BLE001 - any failure here means the same thing to the user
        sys.stderr.write(
            f"error: retrain/{name}: serving stopped but its schedule could not be paused ({exc}); "
            "pause it in the Prefect UI before its next run comes due\n"
        )


def _stop_serving(name: str) -> Callable[[int, FrameType | None], None]:
    """The Ctrl-C / SIGTERM handler: pause the schedule first, then stop.

    asyncio's own first-Ctrl-C handler only cancels the main task, and a cancel that lands while
    Prefect's runner is starting a flow run can be absorbed: the runner then went on serving, and
    starting runs, until it was killed, and the schedule was never paused. Pausing here, before
    anything can get lost, and raising KeyboardInterrupt outright makes both happen.
    """

    def stop(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: out at once
        _pause_or_explain(name)
        raise KeyboardInterrupt

    return stop


def serve_retrain(name: str, schedule: RetrainSchedule, parameters: dict[str, Any]) -> None:
    """Register (or update) deployment `retrain/<name>` and run its scheduled runs until interrupted.

    The entrypoint is the module path `flows.retrain.retrain`, so each run imports the installed
    package whatever the runner's working directory. Ctrl-C or SIGTERM stops serving and pauses the
    schedule (first thing in the signal handler, not only on the runner's way out, which can be
    cut short); nothing runs while no runner serves the deployment.
    """
    from flows.retrain import retrain

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _stop_serving(name))
    retrain.serve(
        name=name,
        schedules=[schedule.to_prefect()],
        parameters=parameters,
        global_limit=ONE_AT_A_TIME,
        description=DESCRIPTION,
        tags=["bitune", "retrain"],
        entrypoint_type=EntrypointType.MODULE_PATH,
        pause_on_shutdown=True,
        print_starting_message=False,
    )
