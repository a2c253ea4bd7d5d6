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

import asyncio
import datetime
import math
import signal
import sys
import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
from prefect import Flow
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.runner import Runner
from prefect.settings import get_current_settings
from prefect.types.entrypoint import EntrypointType
from pydantic import ValidationError

from bitune.errors import BituneError
from flows.prefect_outage import outlast_outages

DEFAULT_CRON = "0 3 * * *"
CRON_FIELDS = "minute hour day-of-month month day-of-week"
MAX_INTERVAL_SECONDS = 366 * 24 * 3600  # rarer than yearly is a cron line's job
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
            raise _refused(self, exc.errors()[0]["msg"].removeprefix("Value error, ")) from None

    def next_runs(self, count: int = 2) -> list[datetime.datetime]:
        """When the next runs come due, in the schedule's time zone, computed the way Prefect's
        scheduler computes them (its own schedule code); none for a cron line no date matches."""
        from prefect._vendor.croniter import CroniterBadDateError
        from prefect.server.schemas import schedules as server

        made = self.to_prefect()
        kind = server.IntervalSchedule if isinstance(made, IntervalSchedule) else server.CronSchedule
        try:
            return list(asyncio.run(kind(**made.model_dump()).get_dates(n=count)))
        except CroniterBadDateError:
            return []

    def describe(self) -> str:
        if self.interval_seconds is not None:
            return f"every {self.interval_seconds:g} s"
        return f"cron {self.cron or DEFAULT_CRON} ({self.timezone})"


def _refused(schedule: RetrainSchedule, prefect_says: str) -> OrchestrationError:
    """Prefect's complaint about a schedule, as the option the user gave."""
    if prefect_says.startswith("Invalid timezone"):
        return _bad_timezone(schedule.timezone)
    if schedule.interval_seconds is None:
        if prefect_says.startswith("Invalid cron string"):  # Prefect's says only that, quoting the line
            prefect_says = "a field is out of range or not cron syntax"
        return OrchestrationError(f"--cron {schedule.cron!r}: {prefect_says}; {_cron_fix()}")
    return OrchestrationError(f"schedule {schedule.describe()}: {prefect_says[:160]}")


def _cron_fix() -> str:
    return f"give five fields ({CRON_FIELDS}), e.g. '{DEFAULT_CRON}' for 03:00 every day"


def _bad_timezone(timezone: str) -> OrchestrationError:
    """`--timezone X` is not a zone name Prefect knows; suggests the spelling when only case differs."""
    same_but_case = [z for z in zoneinfo.available_timezones() if z.lower() == timezone.lower()]
    fix = f"did you mean {same_but_case[0]}?" if same_but_case else "give a name like UTC or Europe/Berlin"
    return OrchestrationError(f"--timezone {timezone!r}: not an IANA time zone; {fix}")


def check_cron(cron: str) -> None:
    """Five fields or an @-name (`@daily`); a sixth field is refused rather than read as seconds.

    Prefect accepts six fields and reads the sixth as seconds: `0 3 * * * *` (a Quartz-style line)
    comes due every second of 03:00, sixty runs a night.
    """
    fields = cron.split()
    if not fields:
        raise OrchestrationError(f"--cron {cron!r}: empty; {_cron_fix()}")
    if fields[0].startswith("@"):
        return  # @daily, @hourly, ...: Prefect checks the name
    if len(fields) != 5:
        extra = " (a sixth would be read as seconds)" if len(fields) == 6 else ""
        raise OrchestrationError(f"--cron {cron!r}: {len(fields)} fields{extra}; {_cron_fix()}")


def make_schedule(cron: str | None, interval_seconds: float | None, timezone: str = "UTC") -> RetrainSchedule:
    """Exactly one of `cron` and `interval_seconds`; neither means the nightly default.

    Checked in full before anything is registered: a schedule that can never come due is refused.
    """
    if cron is not None and interval_seconds is not None:
        raise OrchestrationError("--cron and --interval both given; choose one schedule")
    if interval_seconds is not None and not 0 < interval_seconds <= MAX_INTERVAL_SECONDS:
        shown = f"{interval_seconds:g}" if math.isfinite(interval_seconds) else str(interval_seconds)
        raise OrchestrationError(
            f"--interval {shown}: give a number of seconds from 1 to {MAX_INTERVAL_SECONDS} (366 days); "
            "for rarer runs give a --cron line"
        )
    if not timezone.strip():
        raise _bad_timezone(timezone)
    if cron is not None:
        check_cron(cron)
    schedule = RetrainSchedule(cron, interval_seconds, timezone)
    if not schedule.next_runs(1):
        raise OrchestrationError(
            f"--cron {cron!r}: no date ever matches it (a day the month never has?); "
            f"e.g. '{DEFAULT_CRON}' is 03:00 every day"
        )
    return schedule


def check_name(name: str) -> None:
    """A deployment name Prefect's runner takes as it is (an empty one would become `retrain/retrain`)."""
    if not name.strip() or any(c in name for c in "/%"):
        raise OrchestrationError(
            f"--name {name!r}: give a deployment name without '/' or '%', e.g. retrain-scheduled"
        )


def require_api_server() -> str:
    """The configured Prefect API URL, after checking a server answers there.

    Reads PREFECT_API_URL the way Prefect does (environment, then the active profile).
    """
    from prefect.client.orchestration import get_client

    url = get_current_settings().api.url
    if not url:
        raise OrchestrationError(
            "PREFECT_API_URL is not set: a schedule needs a running Prefect server (the temporary "
            f"one `bitune run` starts has no scheduler); {START_SERVER_HINT}"
        )
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        base = url.rstrip("/")
        hint = "" if base.endswith("/api") else f"add /api to PREFECT_API_URL ({base}/api); "
        raise OrchestrationError(
            f"PREFECT_API_URL={url}: no Prefect server answers ({type(problem).__name__}); "
            + hint
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


def _pause_or_explain(name: str) -> bool:
    """Pause, or say in one line that the schedule may still fire; silent when there is none yet.
    False when the pause failed (the server is down, say): pausing again on the way out is futile."""
    from prefect.exceptions import ObjectNotFound

    try:
        pause_served_deployment(name)
    except ObjectNotFound:  # stopped while registering, before the deployment existed: nothing to pause
        return True
    except Exception as exc:  # noqa: BLE001 - any failure here means the same thing to the user
        sys.stderr.write(
            f"error: retrain/{name}: serving stopped but its schedule could not be paused ({exc}); "
            "pause it in the Prefect UI before its next run comes due\n"
        )
        return False
    return True


class ScheduleRunner(Runner):
    """Prefect's runner, stopped on SIGTERM the way Ctrl-C stops it.

    `Runner.start` installs its own SIGTERM handler, which calls the async `stop` from inside the
    event loop, where it only makes a coroutine that never runs, and exits: a run in progress went
    on, the runner waited for it, and the schedule stayed active though "Pausing all deployments..."
    was logged. Here SIGTERM goes to `on_signal`, set by `serve_retrain`.
    """

    on_signal: StopServing | None = None

    def handle_sigterm(self, *args: Any, **kwargs: Any) -> None:
        if self.on_signal is None:
            raise KeyboardInterrupt
        self.on_signal(signal.SIGTERM, None)


class StopServing:
    """The Ctrl-C / SIGTERM handler: pause the schedule first, then stop the runner in its own loop.

    Pausing comes first, before anything can get lost: nothing comes due while no runner serves the
    deployment. The runner then stops as Prefect stops it (`astop`): a run in progress gets SIGTERM,
    which a retrain turns into MLflow runs marked KILLED with its checkpoints kept (the next run
    resumes), and ends Cancelled. Raising KeyboardInterrupt inside the loop instead printed asyncio
    tracebacks and left a run in progress training. A second signal stops at once.
    """

    def __init__(self, name: str, runner: ScheduleRunner, loop: asyncio.AbstractEventLoop) -> None:
        self.name, self.runner, self.loop = name, runner, loop
        self.stopping: asyncio.Task[None] | None = None
        self.signalled = False
        self.pause_failed = False  # said on stderr when it happened; the goodbye must not say "paused"

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.signalled:
            raise KeyboardInterrupt
        self.signalled = True
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if not _pause_or_explain(self.name):
            # the runner's own pause on shutdown would retry against the same dead server for 75 s
            self.runner.pause_on_shutdown = False
            self.pause_failed = True
        if not self.runner.started:  # still registering: nothing runs yet
            raise KeyboardInterrupt
        self.loop.call_soon_threadsafe(self._stop_runner)

    def _stop_runner(self) -> None:
        self.stopping = self.loop.create_task(self.runner.astop())


async def _serve(
    retrain: Flow[..., Any],
    name: str,
    schedule: RetrainSchedule,
    parameters: dict[str, Any],
    early: list[int],
) -> bool:
    runner = ScheduleRunner(name=name, pause_on_shutdown=True)
    stop = StopServing(name, runner, asyncio.get_running_loop())
    runner.on_signal = stop
    signal.signal(signal.SIGINT, stop)  # before asyncio's own, which only cancels the main task
    signal.signal(signal.SIGTERM, stop)  # until `start` hands SIGTERM to `handle_sigterm`, which calls it
    if early:  # a signal came while the loop was being built: act on it now
        stop(early[0], None)
    try:
        await runner.aadd_flow(
            retrain,
            name=name,
            schedules=[schedule.to_prefect()],
            parameters=parameters,
            concurrency_limit=ONE_AT_A_TIME,
            description=DESCRIPTION,
            tags=["bitune", "retrain"],
            entrypoint_type=EntrypointType.MODULE_PATH,
        )
    except (httpx.TransportError, OSError) as exc:  # the server went away since `require_api_server`
        raise OrchestrationError(
            f"the Prefect server at {get_current_settings().api.url} stopped answering while retrain/{name} "
            f"was being registered ({type(exc).__name__}); start it again, then run `bitune schedule` again"
        ) from exc
    await runner.start()
    return not stop.pause_failed


STOPS = (signal.SIGINT, signal.SIGTERM)


def serve_retrain(name: str, schedule: RetrainSchedule, parameters: dict[str, Any]) -> bool:
    """Register (or update) deployment `retrain/<name>` and run its scheduled runs until stopped.

    The entrypoint is the module path `flows.retrain.retrain`, so each run imports the installed
    package whatever the runner's working directory. Ctrl-C or SIGTERM pauses the schedule, stops a
    run in progress (it resumes from its checkpoint next time) and returns whether the schedule is
    paused (False: the Prefect server could not be reached to pause it, which was said).
    """
    from flows.retrain import retrain  # seconds (torch, mlflow): a Ctrl-C here is a plain interrupt

    outlast_outages(str(get_current_settings().api.url))  # after the import: Prefect's handlers exist

    # From here until `_serve` installs StopServing, a signal is only remembered: raised while
    # asyncio builds its loop, it printed "Exception ignored in BaseEventLoop.__del__" tracebacks.
    early: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: early.append(signum)) for sig in STOPS}
    try:
        return asyncio.run(_serve(retrain, name, schedule, parameters, early))
    finally:  # whatever happened, Ctrl-C is never left a no-op
        for sig, handler in previous.items():
            signal.signal(sig, handler)
