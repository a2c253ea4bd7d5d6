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
from bitune.data.sources import RawData, read_file, read_source
from bitune.data.validation import validate_frames
from bitune.errors import DataError
from bitune.params import DataParams


def dir_md5(files: dict[str, bytes]) -> str:
    """The md5 `dvc add` records for a folder holding exactly `files` (DVC 3's directory manifest)."""
    return _manifest_md5({name: hashlib.md5(content).hexdigest() for name, content in files.items()})


def _manifest_md5(file_md5s: dict[str, str]) -> str:
    manifest = sorted(
        ({"md5": md5, "relpath": name} for name, md5 in file_md5s.items()), key=lambda e: e["relpath"]
    )
    return hashlib.md5(json.dumps(manifest, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


@dataclass(frozen=True)
class SourceToVersion:
    """The data params a run really versions; `warning` says why, when that is not what was asked."""

    data: DataParams
    warning: str | None = None


def source_to_version(data: DataParams, root: Path, current: str | None) -> SourceToVersion:
    """`data` with the source this run really versions: the demo never replaces the user's data.

    `current` is the md5 data.dvc records (None: no data version yet). A run given no new source
    ('demo', the default) trains on that version: when data/ holds another one (`git checkout REV
    -- data.dvc`, or hand edits), it stops before anything changes and names both, rather than
    versioning data/ and rewriting data.dvc back. Only `data.source=data` versions what data/ holds.
    'demo' writes the demo only while there is no data version yet or the current one is itself a
    demo: data/ holds an unedited demo (its marker says so), or data/ is empty and `current` is
    exactly the demo these params write (a fresh clone). Otherwise the run retrains on the current
    data version, read from data/. Raises DataError when data/ is empty and `current` is not the
    demo: only a checkout of that version can help.
    """
    source = data.source.strip()
    data_dir = root / data.dir
    if source == "data" and current is not None and files_in(data_dir) is None:
        raise DataError(
            f"data.source is 'data' but {data.dir}/ is empty while data.dvc records data version "
            f"{current}; restore it with `bitune data checkout {current[:8]}`"
        )
    if source != "demo" or current is None:
        return SourceToVersion(data)
    files = demo_files(data.demo_rows, data.split.seed)
    before_markers = {DEMO_FILE: files[DEMO_FILE]}  # how demos were written before the marker existed
    present = files_in(data_dir)
    if not present:
        if current in (dir_md5(files), dir_md5(before_markers)):
            return SourceToVersion(data)
        raise DataError(
            f"data.source is 'demo' but data.dvc records data version {current}, not the demo, and "
            f"{data.dir}/ is empty; restore it with `bitune data checkout {current[:8]}` (it reads "
            "data.remote; a bare `dvc pull` needs the remote in .dvc/config.local), or pass --data "
            "PATH to version new data"
        )
    held = folder_md5(root, data_dir)
    if held is not None and held != current:
        raise DataError(mismatch_message(data, held, current))
    if holds_demo(data_dir) or present == before_markers:
        return SourceToVersion(data)
    return SourceToVersion(
        data.model_copy(update={"source": "data"}),
        f"data.source is 'demo' but {data.dir}/ holds data version {current}, which is not the demo: "
        "using that version (pass --data PATH to version new data)",
    )


def mismatch_message(data: DataParams, held: str, current: str) -> str:
    """One line: data/ and data.dvc name different versions; the two ways out, neither taken for the user."""
    return (
        f"{data.dir}/ holds data version {held} but data.dvc records {current}; nothing was changed. "
        f"To train on {current[:8]}: `bitune data checkout {current[:8]} --force` (or `dvc checkout "
        f"--force data.dvc`), which replaces {data.dir}/; to version what {data.dir}/ holds instead: "
        "rerun with --set data.source=data (or `dvc add` it)"
    )


def folder_md5(root: Path, folder: Path) -> str | None:
    """The md5 `dvc add` would record for `folder` now: every file below it, hidden ones too.

    None when that cannot be told without DVC (a .dvcignore may leave files out) or the folder holds
    no file; a caller then does not compare it with data.dvc.
    """
    if not folder.is_dir():
        return None
    found = [p for p in folder.rglob("*") if p.is_file()]
    if any(_ignores_files(p) for p in [root / ".dvcignore", *(p for p in found if p.name == ".dvcignore")]):
        return None
    if not found:
        return None
    md5s = {}
    for path in found:
        try:
            with path.open("rb") as stream:  # streamed: data/ may be larger than memory
                md5s[path.relative_to(folder).as_posix()] = hashlib.file_digest(stream, "md5").hexdigest()
        except OSError:
            return None  # an unreadable file: reading the data says so, in its own words
    return _manifest_md5(md5s)


def _ignores_files(dvcignore: Path) -> bool:
    """A .dvcignore with a pattern (`dvc init` writes one holding only comments)."""
    if not dvcignore.is_file():
        return False
    lines = dvcignore.read_text(errors="replace").splitlines()
    return any(line.strip() and not line.lstrip().startswith("#") for line in lines)


def files_in(folder: Path) -> dict[str, bytes] | None:
    """The folder's top-level files but .gitignore; None when it is missing or holds nothing."""
    if not folder.is_dir():
        return None
    entries = [p for p in folder.iterdir() if p.name != ".gitignore"]
    if not entries:
        return None
    return {p.name: (read_file(p) if p.is_file() else b"") for p in entries}  # unreadable: a DataError


def read_to_version(data: DataParams, data_dir: Path) -> RawData:
    """The source's frames and files; the demo's files carry the marker that names them synthetic."""
    raw = read_source(data, data_dir)
    if data.source.strip() == "demo":
        raw = RawData(raw.frames, demo_files(data.demo_rows, data.split.seed))
    return raw


def check_new_source(data: DataParams, root: Path, current: str | None = None) -> None:
    """Read and validate the data a run will version, before any flow starts: a new local file or
    folder, or data/ itself when the run versions what it holds (`data.source: data`, or the default
    source once data/ holds a version that is not the demo).

    A bad row then fails in about a second, with nothing written, instead of after the flow's start-up
    (a Prefect server, the preflight's model and MLflow checks). `current` is the md5 data.dvc records:
    the data step's own choice (`source_to_version`) says which data that is, and its refusals (data/
    empty, or holding another version than data.dvc) come here too. The data step validates again, for
    scheduled runs that do not come through the command line; the demo (valid as generated) and 'hf:'
    sources (a download) are left to it.
    """
    if data.source.strip().startswith("hf:"):
        return
    data = source_to_version(data, root, current).data
    if data.source.strip() == "demo":
        return
    report = validate_frames(read_source(data, root / data.dir).frames, data)
    report.raise_for_errors(source_name(data.source, data.dir))


def source_name(source: str, data_dir: Path = Path("data")) -> str:
    """How a data error names where its rows came from: a file's name, a folder's with a slash
    (`data_dir`'s for 'data')."""
    source = source.strip()
    if source == "data":
        return f"{data_dir.as_posix()}/"
    if source == "demo" or source.startswith("hf:"):
        return source
    path = Path(source).expanduser()
    return f"{path.name}/" if path.is_dir() else path.name
