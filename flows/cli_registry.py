"""`bitune promote | rollback | history | compare | ui | serve`: the model registry and experiment comparison.

Each command resolves the MLflow store the way the flow does (params `tracking`, env
`MLFLOW_TRACKING_URI` wins), calls the plain functions in `tasks.promotion`, and turns any
`BituneError` into one line on the terminal and exit status 2.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from bitune.errors import BituneError
from bitune.evaluation.run_comparison import RunRow, duration_text, param_differences, plot_comparison
from bitune.process_tether import tethered
from flows.cli_errors import console, one_line_errors
from flows.cli_options import HostOpt, ParamsOpt, PortOpt, ProjectOpt

if TYPE_CHECKING:
    from bitune.champion_moves import ChampionMove
    from bitune.params import Params
    from tasks.tracking import TrackingSettings

DEFAULT_PARAMS = Path("params/default.yaml")


def load_settings(project: Path, params: Path) -> tuple[Params, TrackingSettings]:
    """Params and the MLflow store of the project, resolved exactly as the retrain flow resolves them."""
    from bitune.params import load_params
    from tasks.tracking import TrackingSettings

    root = project.resolve()
    loaded = load_params(params if params.is_absolute() else root / params)
    return loaded, TrackingSettings.from_params(loaded.tracking, root)


def ui_command(settings: TrackingSettings, host: str, port: int) -> list[str]:
    """`mlflow ui` on the project's store; new experiments made in the UI keep artifacts in the project."""
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", settings.uri]
    # one local user: one worker starts in seconds; MLflow's default of 4 takes a minute on 2 cores
    command += ["--host", host, "--port", str(port), "--workers", "1"]
    if settings.artifact_location and settings.artifact_location.startswith("file://"):
        command += ["--artifacts-destination", settings.artifact_location]
    return command


def serve_command(model_uri: str, host: str, port: int) -> list[str]:
    """`mlflow models serve` in this environment (`--env-manager local`: no conda, no download)."""
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local"]
    return command + ["--host", host, "--port", str(port)]


def serve_environment(settings: TrackingSettings) -> dict[str, str]:
    """The server's environment: the project's store and the credentials of this one
    (MLFLOW_TRACKING_USERNAME/PASSWORD), artifacts streamed through the tracking server, and this
    interpreter's scripts first on PATH, since MLflow starts `uvicorn` through the shell and a venv
    that is not activated is not on it."""
    from tasks.promotion import DOWNLOAD_THROUGH_SERVER

    scripts = str(Path(sys.executable).parent)
    env = DOWNLOAD_THROUGH_SERVER | dict(os.environ)
    env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")])
    env["MLFLOW_TRACKING_URI"] = settings.uri
    env["MLFLOW_REGISTRY_URI"] = settings.uri
    env.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")  # the model holds no pickle
    return env


def promote(
    version: Annotated[str, typer.Argument(help="model version number to make champion")],
    force: Annotated[
        bool, typer.Option("--force", metavar="", help="skip the gate (scores, CKA, data version)")
    ] = False,
    project: ProjectOpt = Path("."),
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Make VERSION the champion if the promotion gate agrees; the old champion is kept for rollback.

    Versions scored on different test rows are scored again on the rows of a test split prepared in
    the project that neither trained on; without one the gate refuses."""
    with one_line_errors(project):
        from tasks.promotion import promote as promote_version

        loaded, settings = load_settings(project, params)
        done = promote_version(settings, loaded, version, force=force, root=project.resolve())
    if not done.changed:
        console.print(f"Version {done.version} of {done.name} is already the champion; nothing changed.")
        return
    if done.rescored is not None:
        where = done.split_file.relative_to(project.resolve()) if done.split_file else "a local test split"
        rows, total = done.rescored.rows, done.rescored.total
        which = f"all {total} rows" if rows == total else f"the {rows} of {total} rows"
        console.print(
            f"Re-scored version {done.version} and champion version {done.replaced} on {which} of {where} "
            "that neither trained on.",
            highlight=False,
            markup=False,
        )
    was = f"was version {done.replaced}" if done.replaced else "there was none"
    console.print(
        f"[green]Champion of {done.name} is now version {done.version}[/] ({was}): {'; '.join(done.reasons)}"
    )
    if done.replaced:
        console.print("Undo with [bold]bitune rollback[/].")


def rollback(project: ProjectOpt = Path("."), params: ParamsOpt = DEFAULT_PARAMS) -> None:
    """Give the champion alias back to the version the current champion replaced."""
    with one_line_errors(project):
        from tasks.promotion import rollback as rollback_champion

        loaded, settings = load_settings(project, params)
        done = rollback_champion(settings, loaded.registry.model_name)
    console.print(
        f"[green]Rolled back:[/] champion of {done.name} is version {done.version} again"
        f"{_still_holds(done.replaced, done.replaced_aliases)}."
    )


def history(
    as_json: Annotated[
        bool, typer.Option("--json", metavar="", help="print JSON instead of a table")
    ] = False,
    project: ProjectOpt = Path("."),
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Every move of the champion alias, oldest first: when, from and to which version, how (the
    flow's gate, promote, rollback), who and why."""
    with one_line_errors(project):
        from tasks.promotion import champion_moves, rollback_target

        loaded, settings = load_settings(project, params)
        name = loaded.registry.model_name
        moves, current = champion_moves(settings, name)
        target = rollback_target(settings, name) if moves and not as_json else None
    if as_json:
        console.print_json(json.dumps([move.as_dict() for move in moves]))
        return
    if not moves:
        console.print(
            f"No champion moves recorded for {name} yet"
            + (f" (champion: version {current})." if current else "; `bitune run` registers one.")
        )
        return
    console.print(_history_table(moves, name))
    now = f"version {current}" if current else "none"
    # offered only when `bitune rollback` would do it: not for a first champion, nor after a rollback
    # to one (which replaced no earlier champion)
    undo = f" [bold]bitune rollback[/] makes version {target} champion again." if target else ""
    console.print(f"Champion now: {now}.{undo}")


def _history_table(moves: list[ChampionMove], name: str) -> Table:
    """Fits 80 columns: the number, time and versions never cut; only the reason wraps."""
    table = Table(
        title=f"champion moves of {name}",
        caption="time: local; how: gate = the flow's gate at registration",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1, 0, 0),
    )
    for column in ("#", "time", "move", "how", "by"):
        table.add_column(column, no_wrap=True, justify="right" if column == "#" else "left")
    table.add_column("why", overflow="fold", ratio=1)
    how = {"registration": "gate"}
    for move in moves:
        table.add_row(
            str(move.number),
            move.at.astimezone().strftime("%Y-%m-%d %H:%M"),
            f"{'v' + move.from_version if move.from_version else '-'} → v{move.to_version}",
            how.get(move.action, move.action),
            escape(move.by),
            escape(move.why),
        )
    return table


def _still_holds(version: str | None, aliases: list[str]) -> str:
    """What the version that lost the champion keeps, said only when it keeps something."""
    if not aliases:
        return ""
    noun = "alias" if len(aliases) == 1 else "aliases"
    return f" (version {version} keeps its {noun} {', '.join(aliases)})"


def _result(row: RunRow) -> str:
    """The version a run registered and its aliases; a run that registered none, its status."""
    if not row.model_version:
        return row.status
    return " ".join([f"v{row.model_version}", ", ".join(row.aliases)]).strip()


def _table(rows: list[RunRow], experiment: str, differences: dict[str, str] | None = None) -> Table:
    """Fits 80 columns: short headers, no column rules, ids and scores never cut; only the result column
    (a version's aliases) wraps, at its spaces. `differences` (run id to differing params) adds a
    last column; the caller passes it only when it fits uncut."""
    table = Table(
        title=f"bitune runs in experiment {experiment!r}",
        caption="acc, F1: test accuracy, macro-F1; CKA: similarity to the pretrained encoder; time: m:ss",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=0,
    )
    columns = ["run", "strategy", "data", "acc", "F1", "CKA", "time", "result"]
    for column in columns + (["differs"] if differences else []):
        numeric = column in ("acc", "F1", "CKA", "time")
        table.add_column(column, justify="right" if numeric else "left", no_wrap=column != "result")
    for r in rows:
        score = [
            f"{r.metrics[k]:.4f}" if k in r.metrics else "-"
            for k in ("test/accuracy", "test/macro_f1", "test/cka_to_pretrained")
        ]
        cells = [r.short_id, r.strategy, r.data_version, *score, duration_text(r.seconds), _result(r)]
        table.add_row(*cells, *([escape(differences[r.run_id])] if differences else []))
    return table


def preset_params(project: Path, params: Path, rows: list[RunRow]) -> dict[str, dict[str, str]]:
    """Each run's strategy preset as the params file resolves it, flat: what its `strategy.*` keys are
    compared with. A preset this checkout no longer has is left out (its keys are then not shown)."""
    from bitune.params import load_params

    root = project.resolve()
    presets = {}
    for name in {r.params.get("strategy.name", r.strategy) for r in rows if r.params}:
        try:
            presets[name] = load_params(
                params if params.is_absolute() else root / params, [f"strategy={name}"]
            ).flat()
        except BituneError:
            continue
    return presets


def _print_comparison(
    rows: list[RunRow], experiment: str, presets: dict[str, dict[str, str]] | None = None
) -> None:
    """The table, with the params that differ among the runs as its last column when that fits the
    terminal uncut, else listed under it, one run id a line (continuations indented past the id)."""
    differences = param_differences(rows, presets)
    table = _table(rows, experiment)
    widest = max((len(text) for text in differences.values()), default=0)
    if differences and Measurement.get(console, console.options, table).maximum + 1 + widest <= console.width:
        console.print(_table(rows, experiment, differences))
        return
    console.print(table)
    if not differences:
        return
    console.print("params that differ:")
    listing = Table.grid(padding=(0, 1))
    listing.add_column(no_wrap=True)
    listing.add_column(overflow="fold")
    for r in rows:
        listing.add_row(r.short_id, escape(differences[r.run_id]))
    console.print(listing, highlight=False)


def compare(
    experiment: Annotated[
        str | None, typer.Option("--experiment", metavar="NAME", help="MLflow experiment (default: params)")
    ] = None,
    plot: Annotated[
        Path | None, typer.Option("--plot", metavar="FILE", help="also write a bar chart of the scores (PNG)")
    ] = None,
    project: ProjectOpt = Path("."),
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Retrain runs side by side: id, strategy, data, test scores, time, version and aliases; then the
    params that differ among them."""
    with one_line_errors(project):
        from tasks.promotion import compare_runs

        loaded, settings = load_settings(project, params)
        if experiment:
            settings = dataclasses.replace(settings, experiment=experiment)
        rows = compare_runs(settings, loaded.registry.model_name)
    if not rows:
        console.print(
            f"No bitune runs in experiment {settings.experiment!r} yet; start one with `bitune run`."
        )
        return
    _print_comparison(rows, settings.experiment, preset_params(project, params, rows))
    if plot is not None:
        console.print(f"Plot written to {plot_comparison(rows, plot)}")


def ui(
    port: PortOpt = 5000,
    host: HostOpt = "127.0.0.1",
    project: ProjectOpt = Path("."),
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Open the MLflow UI on this project's tracking store (runs `mlflow ui`)."""
    with one_line_errors(project):
        from bitune.params import redact
        from tasks.promotion import ensure_store

        _, settings = load_settings(project, params)
        ensure_store(settings)
    if settings.is_server:
        console.print(
            f"Tracking goes to the MLflow server at {redact(settings.uri_setting, settings.uri)}: "
            "open that address in a browser."
        )
        return
    with one_line_errors(project):
        check_port_free(host, port, "bitune ui")
    command = ui_command(settings, host, port)
    store = redact(settings.uri_setting, settings.uri)
    console.print(f"MLflow UI on http://{host}:{port} (store {store}); Ctrl-C stops it.")
    sys.stdout.flush()
    # MLflow's job runner serves GenAI jobs bitune never submits: eight processes on a laptop's cores
    # for nothing (a value the user exported wins)
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"} | dict(os.environ)
    raise typer.Exit(run_until_interrupted(command, env, "MLflow UI"))


def check_port_free(host: str, port: int, command: str) -> None:
    """A BituneError when (host, port) cannot be listened on, said before the server starts: a busy
    port was uvicorn's `[Errno 98]` and exit 0 under `bitune ui`, a 25-line MLflow traceback under
    `bitune serve`. Binds with SO_REUSEADDR as uvicorn does, so a port left in TIME_WAIT by a server
    just stopped counts as free."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise BituneError(
            f"--host {host}: not an address of this machine ({exc}); pass --host 127.0.0.1"
        ) from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise BituneError(
                    f"port {port} on {host} is in use (another `{command}`?); pass --port N"
                ) from None
            raise BituneError(
                f"--host {host} --port {port}: cannot listen there ({exc.strerror}); pass another "
                "--port N (above 1023) or --host 127.0.0.1"
            ) from None


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # `kill`, a service manager; a closed terminal


def _stop_like_ctrl_c(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def stop_signals_as_interrupts() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt while the block runs; the previous handlers after.

    The server runs in a session of its own, so neither reaches it: without this, `kill` or closing
    the terminal ended bitune and left `mlflow ui` and its uvicorn holding the port.
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread sets handlers
        yield
        return
    previous = {sig: signal.signal(sig, _stop_like_ctrl_c) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_until_interrupted(command: list[str], env: dict[str, str], name: str) -> int:
    """Run a server in a session of its own and turn Ctrl-C, SIGTERM or SIGHUP into SIGTERM for its
    whole group.

    A terminal's Ctrl-C sends SIGINT to every process in the foreground group; uvicorn and MLflow's
    workers each answered it with a KeyboardInterrupt traceback (a README walkthrough counted
    eight), while SIGTERM shuts them down quietly.
    """
    with stop_signals_as_interrupts():
        # tethered: a kill -9 of bitune (no handler runs) stops the server too, by the kernel's SIGTERM
        proc = subprocess.Popen(tethered(command), env=env, start_new_session=True)
        try:
            return proc.wait()
        except KeyboardInterrupt:
            stop_group(proc)
    with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
        console.print(f"{name} stopped.")
    return 0


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group, SIGKILL if it is still there 30 s later; a second
    stop signal meanwhile does not cut the wait short (it would leave the server running)."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                return
            except subprocess.TimeoutExpired:
                break
            except KeyboardInterrupt:
                continue


def serve(
    version: Annotated[
        str | None, typer.Argument(help="model version to serve (default: the champion)")
    ] = None,
    port: PortOpt = 5001,
    host: HostOpt = "127.0.0.1",
    project: ProjectOpt = Path("."),
    params: ParamsOpt = DEFAULT_PARAMS,
) -> None:
    """Serve the champion (or VERSION) over HTTP with `mlflow models serve`: POST texts to /invocations."""
    with one_line_errors(project):
        from bitune.params import redact
        from tasks.promotion import version_to_serve

        loaded, settings = load_settings(project, params)
        chosen = version_to_serve(settings, loaded.registry.model_name, version)
        check_port_free(host, port, "bitune serve")  # else MLflow's 25-line traceback, after the model loads
    name, number = loaded.registry.model_name, str(chosen.version)
    aliases = f" ({', '.join(sorted(chosen.aliases))})" if chosen.aliases else ""
    command = serve_command(f"models:/{name}/{number}", host, port)
    store = redact(settings.uri_setting, settings.uri)  # `user:pass@` in a URI stays off the terminal
    console.print(
        f"Serving {name} version {number}{aliases} on http://{host}:{port}/invocations "
        f"(store {store}); Ctrl-C stops it. Try:\n"
        f"curl -s http://{host}:{port}/invocations -H 'Content-Type: application/json' "
        """-d '{"dataframe_split": {"columns": ["text"], "data": [["not bad at all"]]}}'""",
        soft_wrap=True,
        highlight=False,
        markup=False,
    )
    sys.stdout.flush()
    os.execve(command[0], command, serve_environment(settings))


def register(app: typer.Typer) -> None:
    """Attach this module's commands to the `bitune` app."""
    for command in (promote, rollback, history, compare, ui, serve):
        app.command()(command)
