"""`bitune`: the command line. Parses arguments, starts flows, prints results; errors in one line.

Tracebacks never reach the terminal for errors the user can fix: they go to `.bitune/logs/bitune.log`
and the terminal gets one line naming the problem and the fix, with a non-zero exit.
"""

from __future__ import annotations

import _thread
import os
import signal
import subprocess
import sys
import threading
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from bitune.errors import BituneError
from flows import cli_data, cli_registry, cli_schedule
from flows.cli_errors import (
    LOG_FILE,
    console,
    errors,
    fail,
    fail_unexpected,
    not_a_project,
    project_log,
    project_root,
)
from flows.cli_options import ParamsOpt, ProjectOpt, SetOpt
from flows.console_logging import quiet_defaults, quiet_new_mlflow_store, route_tracebacks

if TYPE_CHECKING:
    from bitune.retrain_summary import RetrainSummary

app = typer.Typer(
    help="Retrain a text classifier with bidirectional fine-tuning, tracked and versioned.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def print_summary(summary: RetrainSummary) -> None:
    """The run on the terminal: phases, test scores, the gate, and where to look (no password)."""
    if summary.skipped:
        console.print(f"[yellow]Nothing to do:[/] {summary.reason}")
        return
    table = Table(title=f"bitune run {summary.run_id}")
    for column in ("phase", "val accuracy", "val macro-F1", "CKA to pretrained", "train s"):
        table.add_column(column, justify="right" if column != "phase" else "left")
    for p in summary.phases:
        table.add_row(
            str(p["phase"]),
            f"{p.get('val_accuracy', float('nan')):.4f}",
            f"{p.get('val_macro_f1', float('nan')):.4f}",
            f"{p['cka']:.4f}",
            f"{p['seconds']:.1f}",
        )
    m = summary.test_metrics
    table.add_row(
        "[bold]test[/]",
        f"{m.get('test/accuracy', float('nan')):.4f}",
        f"{m.get('test/macro_f1', float('nan')):.4f}",
        f"{m.get('test/cka_to_pretrained', float('nan')):.4f}",
        "",
    )
    console.print(table)
    verdict = "[green]promoted to champion[/]" if summary.promoted else "[yellow]not promoted[/]"
    console.print(
        f"Model {summary.model_name} version {summary.model_version}: alias challenger, {verdict}"
        f" ({'; '.join(summary.gate)})"
    )
    store = escape(summary.shown_store())
    console.print(f"Data version {summary.data_version} · MLflow: {store}")
    if (server := summary.server_url()) is not None:  # a server: `mlflow ui` cannot open it
        # without `user:***@`, which a browser would send as the password; without it, the browser asks
        console.print(f"Open the MLflow UI at {escape(server)} in a browser")
    else:
        console.print(f"Open the MLflow UI: [bold]bitune ui[/] (or mlflow ui --backend-store-uri {store})")


def check_prefect_api(timeout_s: float = 5.0) -> None:
    """With PREFECT_API_URL set, the server must answer before the flow starts: otherwise Prefect
    retries for minutes and fails with a traceback. Unset, the flow starts its own temporary server."""
    import urllib.error
    import urllib.request

    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # it answered: auth and the rest are Prefect's to report
    except (OSError, ValueError) as exc:
        from bitune.params import redact

        why = getattr(exc, "reason", None) or exc
        raise BituneError(
            f"PREFECT_API_URL: no Prefect server answers at {redact('url', url)} ({why}); start it "
            "(`prefect server start`) or unset PREFECT_API_URL to let bitune run its own temporary one"
        ) from None


def start_detached_prefect_server() -> None:
    """With PREFECT_API_URL unset, start Prefect's temporary server in a session of its own.

    Ctrl-C reaches every process in the terminal's foreground group: Prefect's own temporary server
    stopped with the run, which then could not record that it was interrupted and retried for two
    minutes before failing with "unexpected ConnectError". Registered under Prefect's default key, so
    the flow's clients use this server; Prefect stops it at exit as it stops its own, and the
    kernel stops it (SIGTERM) if this process is killed with -9 (`tethered`).
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    from bitune.process_tether import tethered

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    server = SubprocessASGIServer()  # Prefect's default (port None) instance: the one its clients use
    if server.running:
        return
    popen = subprocess.Popen

    def detached_and_tethered(args: Any, **kwargs: Any) -> subprocess.Popen[Any]:
        # the patch is process-wide: leave alone whatever else starts a process meanwhile
        if threading.current_thread() is not threading.main_thread() or not isinstance(args, list):
            return popen(args, **kwargs)
        return popen(tethered(args), start_new_session=True, **kwargs)

    subprocess.Popen = detached_and_tethered  # type: ignore[misc,assignment]
    try:
        server.start()
    finally:
        subprocess.Popen = popen  # type: ignore[misc]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stop_on_signals() -> None:
    """SIGTERM ends the run like Ctrl-C (a KeyboardInterrupt: MLflow runs marked KILLED), and an
    interrupt that Python swallowed is delivered again.

    A signal's KeyboardInterrupt raised while a finalizer runs (a weakref callback, a `__del__`) is
    printed as "Exception ignored in ..." and dropped: found in a README walkthrough, Ctrl-C during
    the bottom phase was lost that way and the run went on to register a model, exit 0. The hook
    sends it again a moment later, when the main thread is back in ordinary code, as SIGTERM (our
    handler, which a background run that ignores SIGINT still has).
    """
    signal.signal(signal.SIGTERM, _interrupt)
    previous = sys.unraisablehook

    def redeliver(unraisable: sys.UnraisableHookArgs) -> None:
        if issubclass(unraisable.exc_type, KeyboardInterrupt):
            again = threading.Timer(0.05, _thread.interrupt_main, args=(signal.SIGTERM,))
            again.daemon = True  # never what keeps a finished process alive
            again.start()
            return
        previous(unraisable)

    sys.unraisablehook = redeliver


# what a bug report needs: bitune's version and those of the libraries whose behaviour it leans on
REPORTED_VERSIONS = ("torch", "transformers", "mlflow", "prefect", "dvc", "datasets")


def version_line() -> str:
    """`bitune 0.1.0 (torch 2.13.0, transformers ..., ...)`, from the installed distributions."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    libraries = ", ".join(f"{name} {installed(name)}" for name in REPORTED_VERSIONS)
    return f"bitune {installed('bitune')} ({libraries})"


def _print_version(asked: bool) -> None:
    if asked:
        console.print(version_line(), soft_wrap=True, highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            metavar="",
            help="print the versions of bitune and its libraries",
            is_eager=True,
            callback=_print_version,
        ),
    ] = False,
) -> None:
    """bitune: retrain, compare, promote and roll back text classifiers."""


@app.command()
def run(
    params: ParamsOpt = Path("params/default.yaml"),
    set_: SetOpt = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            metavar="SOURCE",
            help="data source: a file, a folder of split files, hf:<id>[:<config>], data (what data/ "
            "holds) or demo",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", metavar="", help="retrain even when data and params are unchanged")
    ] = False,
    project: ProjectOpt = Path("."),
) -> None:
    """Run the retrain flow: version data, preprocess, head phase, bottom phase, evaluate, register."""
    from bitune.data.versioning import check_new_source
    from bitune.params import load_params
    from bitune.params.folders import check_writable_folders
    from bitune.params.redaction import check_overrides_hold_no_credentials
    from bitune.project_lock import hold_project
    from tasks.dvc_store import data_version

    root = project_root(project)
    quiet_defaults()
    log_file = root / LOG_FILE
    overrides = list(set_ or []) + ([f"data.source={data}"] if data else [])
    params_file = params if params.is_absolute() else root / params
    held = ExitStack()
    try:
        check_overrides_hold_no_credentials(overrides)
        loaded = load_params(params_file, overrides)  # bad params fail here, before any work starts
        # held from here to the end (the flow takes it again, re-entrantly): a second run is refused
        # now, not after Prefect's temporary server has taken seconds to start, and the data check
        # below never reads a data/ another run is rewriting
        held.enter_context(hold_project(root))
        # and a bad data file, or a bad row in a data/ the run versions, before any server starts
        check_new_source(loaded.data, root, data_version(root))
        # and a checkpoint or artifact folder that cannot be written
        tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or loaded.tracking.uri
        check_writable_folders(loaded, root, tracking_server=tracking_uri.startswith("http"))
        # and the model's files and the tracking store, before Prefect and the flow's imports (5-10 s
        # of torch and transformers): a mistyped model path or a server that is down is said in about
        # two seconds. The flow's preflight checks them again (a scheduled run has only that one)
        # and loads the tokenizer.
        from bitune.model.files_check import check_model_files

        check_model_files(loaded.model)
        check_prefect_api()  # before the store check, which creates a new project's mlflow.db
        from tasks.tracking import TrackingSettings, check_store

        quiet_new_mlflow_store()  # the check creates a new project's mlflow.db
        check_store(TrackingSettings.from_params(loaded.tracking, root))
    except BituneError as exc:  # no log file in a folder that is no project (`cd docs && bitune run`)
        held.close()
        raise fail(not_a_project(root, exc), project_log(root)) from None
    with held:
        summary = _run_flow(root, params_file, overrides, force, log_file)
    print_summary(summary)


def _run_flow(
    root: Path, params_file: Path, overrides: list[str], force: bool, log_file: Path
) -> RetrainSummary:
    """The retrain flow in this process; every way it ends is one line or the summary."""
    from tasks.dvc_store import data_version

    quiet_defaults()
    from flows.retrain import retrain

    start_detached_prefect_server()
    route_tracebacks(log_file)
    stop_on_signals()
    before = data_version(root)
    try:
        return retrain(params_file=str(params_file), overrides=overrides, project_dir=str(root), force=force)
    except BituneError as exc:
        raise fail(exc, log_file) from None
    except KeyboardInterrupt:
        left = left_after_interrupt(before, data_version(root), force)
        errors.print(f"interrupted: the MLflow run is marked KILLED; {left}", soft_wrap=True, highlight=False)
        raise typer.Exit(130) from None
    except Exception as exc:  # a bug, not a user error: still one line here, the traceback in the log
        fail_unexpected(exc, log_file)


def left_after_interrupt(before: str | None, after: str | None, force: bool = False) -> str:
    """What an interrupted run leaves: the data step may have finished (it is all or nothing).

    `force`: the run was `--force`, which clears the pipeline's checkpoints when it starts, so a
    second `--force` starts over, and a plain run does nothing if an earlier run trained the same.
    """
    resume = (
        "bitune run --force starts over; a plain bitune run resumes, or does nothing if an earlier run "
        "already trained this data with these params"
        if force
        else "run again to resume from the last checkpoint"
    )
    if after == before:
        return f"data, registry and champion are unchanged; {resume}"
    was = f"was {before[:8]}" if before else "there was none"
    return (
        f"the data step had finished, so data/ and data.dvc now hold data version {str(after)[:8]} "
        f"({was}); registry and champion are unchanged; {resume}"
    )


for _module in (cli_registry, cli_data, cli_schedule):
    _module.register(app)


def main() -> None:  # pragma: no cover - console entry for `python -m flows.cli`
    app(prog_name="bitune")


if __name__ == "__main__":  # pragma: no cover
    main()
