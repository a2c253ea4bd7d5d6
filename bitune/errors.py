"""Errors a user can act on.

Every failure the user can fix (bad file, bad params, missing model, server down) is raised as a
`BituneError` whose message is one line naming the field, row or file and how to fix it; the CLI
prints that line and exits non-zero, and the traceback goes to the log only.
"""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """What a library said, fit for quoting in a one-line error: its first line, cut at `limit`
    characters (an HTTP error can carry a whole page); the exception's type when it said nothing."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


class BituneError(Exception):
    """A problem the user can fix; `str(error)` is the one-line message shown to them."""


class ParamsError(BituneError):
    """The params file or a `--set` override is invalid."""


class DataError(BituneError):
    """The data source is missing, unreadable or fails validation."""


class ModelError(BituneError):
    """The model cannot be loaded or its structure is not understood."""


class TrainingError(BituneError):
    """Training cannot continue (non-finite loss, bad checkpoint)."""


class TrackingError(BituneError):
    """The tracking server or model registry is unreachable or refused a request."""
