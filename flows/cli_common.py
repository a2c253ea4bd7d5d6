"""What every `bitune` command shares: consoles, quiet defaults, and errors in one line."""

from __future__ import annotations

import logging
import os
import traceback
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

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
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class NoTraceback(logging.Filter):
    """Console handlers show the message line; the file handler (first in line) kept the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


def route_tracebacks(log_file: Path) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers.insert(0, handler)
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for h in logging.getLogger(name).handlers:
            if h is not handler:
                h.addFilter(NoTraceback())
    logging.getLogger("bitune").setLevel(logging.INFO)


def fail(exc: BaseException, log_file: Path) -> typer.Exit:
    """One line on the terminal; the traceback appended to the log file."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a", encoding="utf-8") as fh:
        fh.write(f"{datetime.now().isoformat()} bitune failed\n{''.join(traceback.format_exception(exc))}\n")
    errors.print(f"[bold red]error:[/] {exc}", soft_wrap=True, highlight=False, markup=True)
    errors.print(f"[dim](details in {log_file})[/]", highlight=False)
    return typer.Exit(EXIT_USER_ERROR)
