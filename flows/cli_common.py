"""What every `bitune` command shares: consoles, quiet defaults, and errors in one line."""

from __future__ import annotations

import errno
import logging
import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, NoReturn

import click
import typer
from rich.console import Console
from rich.markup import escape

from bitune.errors import BituneError

console = Console(stderr=False)
errors = Console(stderr=True)
LOG_FILE = Path(".bitune/logs/bitune.log")
EXIT_USER_ERROR = 2

ParamsOpt = Annotated[Path, typer.Option("--params", metavar="FILE", help="params file (YAML)")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", metavar="KEY=VALUE", help="override a param (repeatable)")
]
ProjectOpt = Annotated[
    Path, typer.Option("--project", metavar="DIR", help="project folder (holds data.dvc, mlflow.db)")
]
PortOpt = Annotated[int, typer.Option("--port", metavar="PORT", help="port to listen on")]
HostOpt = Annotated[
    str,
    typer.Option("--host", metavar="HOST", help="address to bind; keep loopback unless you mean to share"),
]


def quiet_defaults() -> None:
    """Quiet, local-first defaults for Prefect, MLflow and transformers; anything exported wins."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    # huggingface_hub warns twice a line while it retries a download it cannot reach (five retries a
    # file, a minute in all): forty lines before bitune's one-line error says the same
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    if os.environ["HF_HUB_VERBOSITY"] == "error":  # read at import: already imported, tell its logger
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # saving and mapping the splits
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bitune's own lines (a phase resuming, a skipped run, data warnings) reach the flow run's log in
    # the Prefect UI, not only this terminal: a scheduled run has no terminal
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "bitune")


class NoTraceback(logging.Filter):
    """Console handlers show the message line; the file handler (first in line) kept the traceback.

    An error is not shown at all: Prefect restates it three or four times (task failed, task
    finished Failed, flow failed, flow finished Failed) and the CLI prints it once itself, a user
    error as it is and any other as one "unexpected" line. One instance serves every console
    handler, so it remembers the errors it has seen, as str (a BituneError's message) and as repr
    (how Prefect quotes an OSError).
    """

    def __init__(self) -> None:
        super().__init__()
        self.user_errors: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, Exception):
            self.user_errors.update(text for text in (str(exc), repr(exc)) if text)
        record.exc_info, record.exc_text = None, None
        message = record.getMessage()
        if "aborted by an interrupt signal" in message:  # Ctrl-C: the CLI says what it left, once
            return False
        if not self.user_errors:
            return True
        restated = any(e in message for e in self.user_errors)
        return not (restated or message.startswith("Finished in state Failed"))


class UserErrorWithoutTraceback(logging.Filter):
    """A user-fixable error (a BituneError) logged with its traceback shows on a console as its lines
    without the traceback: its message already says what is wrong and the fix. For a scheduled run,
    whose output reaches the `bitune schedule` terminal with nobody to restate the error once."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], BituneError):
            record.exc_info, record.exc_text = None, None
        return True


def console_without_user_tracebacks() -> None:
    """On every console handler of the loggers Prefect writes to; the handlers of the Prefect API log
    (on the child loggers, called first) still get the traceback, so the Prefect UI keeps it."""
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for h in logging.getLogger(name).handlers:
            console_handler = isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
            if console_handler and not any(isinstance(f, UserErrorWithoutTraceback) for f in h.filters):
                h.addFilter(UserErrorWithoutTraceback())


def route_tracebacks(log_file: Path) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers.insert(0, handler)
    # Console handlers only: Prefect's API handlers (on the child loggers, called first) and the
    # file handler (first on the root) see each record before this filter strips its traceback.
    console_filter = NoTraceback()
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for h in logging.getLogger(name).handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                h.addFilter(console_filter)
    logging.getLogger("bitune").setLevel(logging.INFO)
    # Prefect's event and log queues warn at shutdown while they drain ("Still processing items"):
    # noise after a one-line error. Each service logs under its own class name, not under prefect.
    for name in ("prefect._internal.concurrency", "EventsWorker", "APILogWorker"):
        logging.getLogger(name).setLevel(logging.ERROR)
    quiet_new_mlflow_store()


def quiet_new_mlflow_store() -> None:
    """MLflow announces the tables it makes in a new mlflow.db ("Creating initial MLflow database
    tables...", "Updating database tables"): two library lines in a first `make run`. Call after
    MLflow's import, whose logging config resets the levels of loggers under `mlflow`."""
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)


def is_project(folder: Path) -> bool:
    """A bitune project folder: it holds params/, data.dvc or mlflow.db (a clone has the first two)."""
    return (folder / "params").is_dir() or (folder / "data.dvc").is_file() or (folder / "mlflow.db").is_file()


def project_log(root: Path) -> Path | None:
    """The log file of a command run in `root`; None outside a project, so that running `bitune` in
    the wrong folder (docs/, a home folder) leaves no `.bitune/logs/` there."""
    return root / LOG_FILE if is_project(root) else None


def not_a_project(root: Path, exc: BituneError) -> BituneError:
    """A params file missing from a folder that is no project: the fix is the folder, not --params.
    Names the enclosing project when the folder is inside one (`cd docs && bitune run`)."""
    from bitune.params.loading import ParamsFileNotFound

    if not isinstance(exc, ParamsFileNotFound) or is_project(root):
        return exc
    enclosing = next((folder for folder in root.parents if is_project(folder)), None)
    fix = (
        f"run bitune from {enclosing} or pass --project {enclosing}"
        if enclosing is not None
        else "run bitune from the project folder or pass --project DIR"
    )
    moved = BituneError(f"{root}: not a bitune project folder (no params/ or data.dvc); {fix}")
    moved.__cause__ = exc
    return moved


def fail(exc: BaseException, log_file: Path | None) -> typer.Exit:
    """One line on the terminal; the traceback appended to the log file (none: no log, nothing written)."""
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("a", encoding="utf-8") as fh:
            fh.write(
                f"{datetime.now().isoformat()} bitune failed\n{''.join(traceback.format_exception(exc))}\n"
            )
    # escaped: messages quote values like `layers[0:2]`, which rich would take for markup and drop
    errors.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True, highlight=False, markup=True)
    if log_file is not None:
        errors.print(f"[dim](details in {escape(str(log_file))})[/]", soft_wrap=True, highlight=False)
    return typer.Exit(EXIT_USER_ERROR)


# A write the machine refused (permissions, a read-only or full disk): the fix is there, not in bitune.
_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def fail_unexpected(exc: Exception, log_file: Path | None) -> NoReturn:
    """A bug, not a user error: one line and exit 1 all the same; the traceback goes to the log.

    An OSError the machine caused (no permission, a read-only or full disk) is the user's to fix:
    one line naming the file, exit 2.
    """
    if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
        where = f" {exc.filename}" if exc.filename else ""
        refused = BituneError(
            f"cannot write{where} ({exc.strerror}); free disk space or fix the permissions there, then run "
            "again (a run resumes from its last checkpoint)"
        )
        refused.__cause__ = exc
        raise fail(refused, log_file)
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    wrapped = BituneError(
        f"unexpected {type(exc).__name__}: {first} — a bug in bitune, not in your input; please report "
        "it with the log"
    )
    wrapped.__cause__ = exc  # the log gets the original traceback
    fail(wrapped, log_file)
    raise typer.Exit(1) from None


# How typer and click end a command on purpose (an exit status, --help, a usage error): not failures.
_CLI_EXITS = (typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort, click.ClickException)


def project_root(project: Path) -> Path:
    """The project folder, resolved. A missing one is a one-line error that writes nothing: the log
    file lives in the project, and creating `<project>/.bitune/` for a mistyped path would leave a
    folder behind for bad input."""
    root = project.resolve()
    if not root.is_dir():
        what = "not a folder" if root.exists() else "no such folder"
        error = BituneError(
            f"--project {project}: {what}; pass the project folder (the one holding params/ and data.dvc)"
        )
        raise fail(error, log_file=None)
    return root


@contextmanager
def one_line_errors(project: Path) -> Iterator[None]:
    """Quiet defaults for the command; a BituneError in it is one line on the terminal and exit status 2,
    any other exception one line and exit status 1 (a library's traceback goes to the log, not the
    terminal: a damaged mlflow.db used to print forty lines of SQLAlchemy).

    The project folder is checked first, so every command that takes `--project` refuses a missing
    one the same way, before it reads or writes anything.
    """
    root = project_root(project)
    quiet_defaults()
    try:
        yield
    except BituneError as exc:
        raise fail(not_a_project(root, exc), project_log(root)) from None
    except _CLI_EXITS:
        raise
    except Exception as exc:
        fail_unexpected(exc, project_log(root))
