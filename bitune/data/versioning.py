"""Which data a run versions, decided from the current data version's md5 and what data/ holds.

The default source 'demo' must never replace the user's data. Whether it may write data/ depends on
the data version DVC records (`data.dvc`), which the caller reads and passes in: this module never
touches DVC, so every case is a millisecond test.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from bitune.data.demo import DEMO_FILE, demo_files, holds_demo
from bitune.data.sources import RawData, read_source
from bitune.data.validation import validate_frames
from bitune.errors import DataError
from bitune.params import DataParams


def dir_md5(files: dict[str, bytes]) -> str:
    """The md5 `dvc add` records for a folder holding exactly `files` (DVC 3's directory manifest)."""
    manifest = sorted(
        ({"md5": hashlib.md5(content).hexdigest(), "relpath": name} for name, content in files.items()),
        key=lambda entry: entry["relpath"],
    )
    return hashlib.md5(json.dumps(manifest, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


@dataclass(frozen=True)
class SourceToVersion:
    """The data params a run really versions; `warning` says why, when that is not what was asked."""

    data: DataParams
    warning: str | None = None


def source_to_version(data: DataParams, root: Path, current: str | None) -> SourceToVersion:
    """`data` with the source this run really versions: the demo never replaces the user's data.

    `current` is the md5 data.dvc records (None: no data version yet). 'demo' writes the demo only
    while there is no data version yet or the current one is itself a demo: data/ holds an unedited
    demo (its marker says so), or data/ is empty and `current` is exactly the demo these params
    write (a fresh clone). Otherwise the run retrains on the current data version, read from data/.
    Raises DataError when data/ is empty and `current` is not the demo: only `dvc pull` can help.
    """
    if data.source.strip() != "demo":
        return SourceToVersion(data)
    data_dir = root / data.dir
    if current is None or holds_demo(data_dir):
        return SourceToVersion(data)
    files = demo_files(data.demo_rows, data.split.seed)
    before_markers = {DEMO_FILE: files[DEMO_FILE]}  # how demos were written before the marker existed
    present = files_in(data_dir)
    if not present:
        if current in (dir_md5(files), dir_md5(before_markers)):
            return SourceToVersion(data)
        raise DataError(
            f"data.source is 'demo' but data.dvc records data version {current}, not the demo, and "
            f"{data.dir}/ is empty; restore it with `dvc pull` (or `bitune data checkout {current[:8]}`), "
            "or pass --data PATH to version new data"
        )
    if present == before_markers:
        return SourceToVersion(data)
    return SourceToVersion(
        data.model_copy(update={"source": "data"}),
        f"data.source is 'demo' but {data.dir}/ holds data version {current}, which is not the demo: "
        "using that version (pass --data PATH to version new data)",
    )


def files_in(folder: Path) -> dict[str, bytes] | None:
    """The folder's top-level files but .gitignore; None when it is missing or holds nothing."""
    if not folder.is_dir():
        return None
    entries = [p for p in folder.iterdir() if p.name != ".gitignore"]
    if not entries:
        return None
    return {p.name: (p.read_bytes() if p.is_file() else b"") for p in entries}


def read_to_version(data: DataParams, data_dir: Path) -> RawData:
    """The source's frames and files; the demo's files carry the marker that names them synthetic."""
    raw = read_source(data, data_dir)
    if data.source.strip() == "demo":
        raw = RawData(raw.frames, demo_files(data.demo_rows, data.split.seed))
    return raw


def check_new_source(data: DataParams, root: Path) -> None:
    """Read and validate a new local file or folder before any flow starts.

    A bad file then fails in about a second instead of after the flow's start-up (a Prefect server,
    the preflight's model and MLflow checks). The data step validates again, for scheduled runs that
    do not come through the command line; 'demo', 'data' and 'hf:' sources are left to it.
    """
    source = data.source.strip()
    if source in ("demo", "data") or source.startswith("hf:"):
        return
    validate_frames(read_source(data, root / data.dir).frames, data).raise_for_errors(source_name(source))


def source_name(source: str) -> str:
    """How a data error names where its rows came from: a file's name, a folder's with a slash."""
    source = source.strip()
    if source in ("data", "demo") or source.startswith("hf:"):
        return "data/" if source == "data" else source
    path = Path(source).expanduser()
    return f"{path.name}/" if path.is_dir() else path.name
