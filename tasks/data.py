"""Stage 1, version data: source -> validated -> data/ -> `dvc add` -> pushed; returns the md5."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from prefect import task

from bitune.data.demo import DEMO_FILE, demo_files, holds_demo
from bitune.data.sources import RawData, materialise, read_source
from bitune.data.validation import validate_frames
from bitune.errors import DataError
from bitune.params import DataParams
from tasks import dvc_store

log = logging.getLogger("bitune")


@dataclass(frozen=True)
class DataVersion:
    md5: str
    path: str
    remote: str
    changed: bool
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)


def dir_md5(files: dict[str, bytes]) -> str:
    """The md5 `dvc add` records for a folder holding exactly `files` (DVC 3's directory manifest)."""
    manifest = sorted(
        ({"md5": hashlib.md5(content).hexdigest(), "relpath": name} for name, content in files.items()),
        key=lambda entry: entry["relpath"],
    )
    return hashlib.md5(json.dumps(manifest, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def source_to_version(data: DataParams, root: Path) -> DataParams:
    """`data` with the source this run really versions: the demo never replaces the user's data.

    'demo' writes the demo only while there is no data version yet or the current one is itself a
    demo: data/ holds an unedited demo (its marker says so), or data/ is empty and data.dvc names
    exactly the demo these params write (a fresh clone). Otherwise the run retrains on the current
    data version, read from data/.
    """
    if data.source.strip() != "demo":
        return data
    current = dvc_store.data_version(root)
    data_dir = root / data.dir
    if current is None or holds_demo(data_dir):
        return data
    files = demo_files(data.demo_rows, data.split.seed)
    before_markers = {DEMO_FILE: files[DEMO_FILE]}  # how demos were written before the marker existed
    present = _files_in(data_dir)
    if not present:
        if current in (dir_md5(files), dir_md5(before_markers)):
            return data
        raise DataError(
            f"data.source is 'demo' but data.dvc records data version {current}, not the demo, and "
            f"{data.dir}/ is empty; restore it with `dvc pull` (or `bitune data checkout {current[:8]}`), "
            "or pass --data PATH to version new data"
        )
    if present == before_markers:
        return data
    log.warning(
        "data: data.source is 'demo' but %s/ holds data version %s, which is not the demo: retraining on "
        "it (pass --data PATH to version new data)",
        data.dir,
        current,
    )
    return data.model_copy(update={"source": "data"})


def _files_in(folder: Path) -> dict[str, bytes] | None:
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


def version_data_fn(data: DataParams, root: Path) -> DataVersion:
    """Validate before touching anything: a bad source leaves data/, data.dvc and the remote as they were."""
    data = source_to_version(data, root)
    data_dir = root / data.dir
    raw = read_to_version(data, data_dir)
    report = validate_frames(raw.frames, data)
    report.raise_for_errors()
    for warning in report.warnings:
        log.warning("data: %s", warning)
    dvc_store.ensure_repo(root, data.remote)
    before = dvc_store.data_version(root)
    if data.source != "data":
        materialise(raw, data_dir)
    md5 = dvc_store.add_and_push(root, str(data.dir))
    return DataVersion(
        md5=md5,
        path=str(data_dir),
        remote=dvc_store.resolve_remote(root, data.remote),
        changed=md5 != before,
        warnings=list(report.warnings),
        stats={k: float(v) for k, v in report.stats.items() if isinstance(v, int | float)},
    )


@task(name="version-data", retries=0)
def version_data(data: DataParams, root: str) -> DataVersion:
    return version_data_fn(data, Path(root))
