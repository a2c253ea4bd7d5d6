"""How a `bitune` command ends: its consoles, and every failure as one line and an exit status."""

from __future__ import annotations

import errno
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import NoReturn

import click
import typer
from rich.console import Console
from rich.markup import escape

from bitune.errors import BituneError
from flows.console_logging import quiet_defaults

console = Console(stderr=False)
errors = Console(stderr=True)
LOG_FILE = Path(".bitune/logs/bitune.log")
EXIT_USER_ERROR = 2


def is_project(folder: Path) -> bool:
    """A bitune project folder: it holds params/, data.dvc or mlflow.db (a clone has the first two).
    A params/ that is a Python package is not one: the clone's `bitune/params/` is."""
    params = folder / "params"
    has_params = params.is_dir() and not (params / "__init__.py").exists()
    return has_params or (folder / "data.dvc").is_file() or (folder / "mlflow.db").is_file()


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
