"""Stage 1, version data: source -> validated -> data/ -> `dvc add` -> pushed; returns the md5."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from prefect import task

from bitune.data.remote import missing_aws_credentials
from bitune.data.sources import STORED_COLUMNS, columns_in_store, materialise
from bitune.data.validation import validate_frames
from bitune.data.versioning import read_to_version, source_name, source_to_version
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
    columns: tuple[str, str] = STORED_COLUMNS  # data/'s (text, label) columns the run reads
    source: str | None = None  # the data.source the run versioned: 'data' when a plain run reused data/


def version_data_fn(data: DataParams, root: Path) -> DataVersion:
    """Validate before touching anything: a bad source leaves data/, data.dvc and the remote as they were."""
    before = dvc_store.data_version(root)
    chosen = source_to_version(data, root, before)
    if chosen.warning:
        log.warning("data: %s", chosen.warning)
    data = chosen.data
    data_dir = root / data.dir
    raw = read_to_version(data, data_dir)
    report = validate_frames(raw.frames, data)
    report.raise_for_errors(source_name(data.source, data.dir))
    for warning in report.warnings:
        log.warning("data: %s", warning)
    # a failed push (remote down, a DVC plugin missing) puts data/, data.dvc and the remote setting
    # back byte for byte
    with dvc_store.remote_setting_kept(root):
        dvc_store.ensure_repo(root, data.remote)
        with dvc_store.data_kept_aside(root, str(data.dir)):
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
        columns=columns_in_store(data, data_dir),
        source=data.source,
    )


def warn_remote_credentials(data: DataParams) -> None:
    """For the preflight: an s3:// remote with no AWS credentials in sight is said before the data step,
    not found out at its push; only said, since an instance role cannot be seen from here."""
    if (warning := missing_aws_credentials(data.remote)) is not None:
        log.warning("data: %s", warning)


@task(name="version-data", retries=0)
def version_data(data: DataParams, root: str) -> DataVersion:
    return version_data_fn(data, Path(root))
