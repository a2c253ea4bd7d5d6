"""What reaches a terminal from Prefect, MLflow and the libraries, for the CLI and for flow runs alike:
quiet defaults, and tracebacks kept out of the console (the log file and the Prefect UI keep them)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from bitune.errors import BituneError


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
