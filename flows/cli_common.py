"""What every `bitune` command shares: consoles, quiet defaults, and errors in one line."""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from bitune.errors import BituneError

console = Console(stderr=False)
errors = Console(stderr=True)
LOG_FILE = Path(".bitune/logs/bitune.log")
EXIT_USER_ERROR = 2

ParamsOpt = Annotated[Path, typer.Option("--params", help="params file (YAML)")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", help="override a param: key=value (repeatable)")]
ProjectOpt = Annotated[Path, typer.Option("--project", help="project folder (holds data.dvc, mlflow.db)")]


def quiet_defaults() -> None:
    """Quiet, local-first defaults for Prefect, MLflow and transformers; anything exported wins."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # saving and mapping the splits
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bitune's own lines (a phase resuming, a skipped run, data warnings) reach the flow run's log in
    # the Prefect UI, not only this terminal: a scheduled run has no terminal
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "bitune")


class NoTraceback(logging.Filter):
    """Console handlers show the message line; the file handler (first in line) kept the traceback.

    A user error (BituneError) is not shown at all: Prefect restates it three or four times (task
    failed, task finished Failed, flow failed, flow finished Failed) and the CLI prints it once
    itself. One instance serves every console handler, so it remembers the errors it has seen.
    """

    def __init__(self) -> None:
        super().__init__()
        self.user_errors: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, BituneError):
            self.user_errors.add(str(exc))
        record.exc_info, record.exc_text = None, None
        if not self.user_errors:
            return True
        message = record.getMessage()
        restated = any(e in message for e in self.user_errors)
        return not (restated or message.startswith("Finished in state Failed"))


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
    """Quiet defaults for the command; a BituneError in it is one line on the terminal and exit status 2.

    The project folder is checked first, so every command that takes `--project` refuses a missing
    one the same way, before it reads or writes anything.
    """
    root = project_root(project)
    quiet_defaults()
    try:
        yield
    except BituneError as exc:
        raise fail(exc, root / LOG_FILE) from None
