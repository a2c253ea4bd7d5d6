"""`bitune schedule`: serve the retrain flow on a cron schedule (or an interval) from a Prefect server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli_errors import EXIT_USER_ERROR, console, errors, one_line_errors
from flows.cli_options import ParamsOpt, ProjectOpt, SetOpt


def schedule(
    cron: Annotated[
        str | None,
        typer.Option(
            "--cron", metavar="LINE", help="cron line, e.g. '0 3 * * *' (the default when no --interval)"
        ),
    ] = None,
    interval: Annotated[
        float | None,
        typer.Option(
            "--interval", metavar="SECONDS", help="run every N seconds instead of a cron line", min=1
        ),
    ] = None,
    timezone: Annotated[
        str, typer.Option("--timezone", metavar="TZ", help="IANA time zone of the cron line")
    ] = "UTC",
    name: Annotated[
        str,
        typer.Option(
            "--name",
            metavar="NAME",
            help="deployment name: retrain/<name> on the server (not the worker's retrain-nightly, "
            "which serving under the same name would replace)",
        ),
    ] = "retrain-scheduled",
    params: ParamsOpt = Path("params/default.yaml"),
    set_: SetOpt = None,
    project: ProjectOpt = Path("."),
) -> None:
    """Serve the retrain flow on a schedule; needs a Prefect server (PREFECT_API_URL). Ctrl-C stops it."""
    from bitune.params import load_params
    from bitune.params.redaction import check_overrides_hold_no_credentials

    root = project.resolve()
    overrides = list(set_ or [])
    with one_line_errors(root):
        check_overrides_hold_no_credentials(overrides)  # a deployment's parameters are kept in clear
        loaded = load_params(params if params.is_absolute() else root / params, overrides)  # fail first
        from flows.schedule import (
            check_name,
            deployment_parameters,
            make_schedule,
            require_api_server,
            serve_retrain,
        )

        check_name(name)
        when = make_schedule(cron, interval, timezone)
        api_url = require_api_server()
        parameters = deployment_parameters(params, overrides, root)
    try:  # from here a Ctrl-C is this one line (Typer would exit 130 saying nothing)
        console.print(
            f"Serving [bold]retrain/{name}[/] from {api_url}: {when.describe()}, "
            f"params {parameters['params_file']} in {parameters['project_dir']}.\n"
            f"Next runs: {', '.join(f'{t:%a %Y-%m-%d %H:%M %Z}' for t in when.next_runs(2))}.\n"
            "At most one retrain at a time: a run that comes due while another is training is cancelled "
            "(Prefect shows it Cancelled: 'Deployment concurrency limit reached.'); "
            f"{run_time_limit(loaded.train.timeout_minutes)}\n"
            f"Run one now: prefect deployment run 'retrain/{name}'. "
            "Ctrl-C (or SIGTERM) pauses the schedule, stops a run in progress (the next one resumes from "
            "its checkpoint) and stops serving.",
            soft_wrap=True,
            highlight=False,
        )
        with one_line_errors(root):  # the server gone while registering is one line too
            paused = serve_retrain(name, when, parameters)  # until Ctrl-C or SIGTERM, which pause first
    except KeyboardInterrupt:  # before serving started (importing, registering), or a second Ctrl-C
        errors.print(
            f"interrupted: retrain/{name} is not being served (its schedule, if it had one, is paused); "
            f"`bitune schedule --name {name}` serves it again.",
            soft_wrap=True,
            highlight=False,
        )
        raise typer.Exit(130) from None
    if not paused:  # the one-line error above said so and what to do; a script must see it too
        console.print(f"Stopped serving retrain/{name}.", soft_wrap=True, highlight=False)
        raise typer.Exit(EXIT_USER_ERROR)
    console.print(
        f"Stopped serving retrain/{name}; its schedule is paused until `bitune schedule --name {name}` "
        "serves it again.",
        soft_wrap=True,
        highlight=False,
    )


def run_time_limit(minutes: float | None) -> str:
    """What keeps a hung run from holding the one slot: said when serving starts, when it can be fixed."""
    if minutes is None:
        return "no run time limit: a run that hangs holds the slot until stopped (set train.timeout_minutes)."
    return f"a run still going after train.timeout_minutes={minutes:g} is stopped and fails as TimedOut."


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the `bitune` app."""
    app.command(name="schedule")(schedule)
