"""DVC as the data version store: `data/` tracked by the top-level `data.dvc`, pushed to a remote.

Plain functions around the `dvc` command line (run in-process through `python -m dvc`, so the
project's own installed DVC is used); the data version everywhere is the md5 `data.dvc` records.
Every function that rewrites `data.dvc` puts its exact bytes back when it fails, so a failed
ingest or checkout leaves the project as it was.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

from bitune.errors import DataError

REMOTE_NAME = "bitune"
DVC_FILE = "data.dvc"
MD5 = re.compile(r"^[0-9a-f]{32}(\.dir)?$")


def _dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        raise DataError(f"dvc {' '.join(args)} failed in {root}: {_last_line(proc)}")
    return proc


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    """DVC's first ERROR line without its prefixes when there is one, else its last line that is not
    the support link DVC ends every failure with. Needs DVC run without -q: -q drops the ERROR lines."""
    text = "\n".join(part for part in (proc.stderr.strip(), proc.stdout.strip()) if part)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not _SUPPORT_LINK.search(line)]
    error = next((line for line in lines if line.startswith("ERROR")), None)
    if error is None:
        return (lines[-1] if lines else f"dvc exited with status {proc.returncode}")[:200]
    return re.sub(r"^ERROR:\s*(unexpected error\s*-\s*)?", "", error)[:200]


_SUPPORT_LINK = re.compile(r"Having any troubles\?|dvc\.org/support")


def resolve_remote(root: Path, remote: str) -> str:
    """A local remote path is made absolute against the project; URLs (s3://...) pass through."""
    return remote if "://" in remote else str((root / remote).resolve())


def ensure_repo(root: Path, remote: str) -> None:
    """`dvc init` when needed, and point the default remote at `remote` in `.dvc/config.local`.

    The remote goes to the local (untracked) config, so a params change never dirties git.
    """
    if not (root / ".dvc").exists():
        args = ["init", "-q"] if (root / ".git").exists() else ["init", "-q", "--no-scm"]
        _dvc(root, *args)
        _dvc(root, "config", "core.analytics", "false")
    url = resolve_remote(root, remote)
    if "://" not in url:
        if Path(url).exists() and not Path(url).is_dir():
            raise DataError(
                f"data.remote {remote!r}: {url} is a file, not a folder; point data.remote at a folder "
                "(it is created when missing) or an s3:// URL"
            )
        try:
            Path(url).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(
                f"data.remote {remote!r}: cannot create the folder {url} ({exc.strerror or exc}); "
                "point data.remote at a writable folder or an s3:// URL"
            ) from None
    _dvc(root, "remote", "add", "--local", "--default", "--force", REMOTE_NAME, url)


def data_version(root: Path, dvc_file: str = DVC_FILE) -> str | None:
    """The md5 `data.dvc` records for `data/`, or None before the first version."""
    path = root / dvc_file
    if not path.exists():
        return None
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or [{}]
    return outs[0].get("md5")


@contextmanager
def _restored_on_failure(root: Path) -> Iterator[None]:
    """On any exception: data.dvc back to its exact bytes (or gone, if it was) and data/ checked out to it.

    data/ comes back from the local cache, which holds every version `dvc add` has seen here.
    """
    dvc_file = root / DVC_FILE
    before = dvc_file.read_bytes() if dvc_file.exists() else None
    try:
        yield
    except BaseException:
        if before is None:
            dvc_file.unlink(missing_ok=True)
        else:
            dvc_file.write_bytes(before)
            _dvc(root, "checkout", "-q", "--force", DVC_FILE, check=False)
        raise


def add_and_push(root: Path, data_dir: str = "data") -> str:
    """Version `data/` and push it to the remote; returns the data version (md5).

    When `dvc add` or the push fails, data.dvc and data/ go back to the previous version: a version
    that is not in the remote must not become the project's current one.
    """
    with _restored_on_failure(root):
        _dvc(root, "add", "-q", data_dir)
        version = data_version(root)
        if version is None:
            raise DataError(f"{root / DVC_FILE}: dvc add wrote no md5; check that {data_dir}/ is not empty")
        proc = _dvc(root, "push", "-r", REMOTE_NAME, DVC_FILE, check=False)  # no -q: it hides the error
        if proc.returncode != 0:
            raise DataError(
                f"cannot push data version {version} to the DVC remote ({_last_line(proc)}); check "
                "data.remote and its credentials — data.dvc was left at the previous version"
            )
    return version


def remote_has_current(root: Path) -> bool:
    """`dvc status -c`: True when the remote holds everything `data.dvc` references."""
    proc = _dvc(root, "status", "-c", "--json", "-r", REMOTE_NAME, DVC_FILE)
    return json.loads(proc.stdout or "{}") == {}


def has_local_changes(root: Path) -> bool:
    """True when data/ holds edits that `data.dvc` does not record (a checkout would discard them)."""
    if not (root / DVC_FILE).exists():
        return False
    proc = _dvc(root, "status", "--json", DVC_FILE)
    changes = json.loads(proc.stdout or "{}").get(DVC_FILE, [])
    return any(
        state == "modified"
        for change in changes
        if isinstance(change, dict)
        for state in (change.get("changed outs") or {}).values()
    )


def checkout(root: Path, version: str, data_dir: str = "data", force: bool = False) -> str:
    """Restore data/ and data.dvc to `version` (an md5, with or without `.dir`) from the cache or remote.

    data.dvc ends as `dvc add` writes it for that version. On any failure data.dvc keeps its exact
    bytes and data/ its content; uncommitted edits in data/ stop the checkout unless `force`.
    """
    version = _dir_version(version)
    if not force and has_local_changes(root):
        raise DataError(
            f"{data_dir}/ has changes that {DVC_FILE} does not record; version them with "
            f"`bitune run --set data.source=data`, or pass --force to discard them"
        )
    with _restored_on_failure(root):
        _write_spec(root, version, data_dir)
        proc = _fetch(root, DVC_FILE)
        if not _object_path(cache_dir(root), version).is_file():
            raise DataError(_not_restorable(root, version, proc))
        _dvc(root, "checkout", "-q", "--force", DVC_FILE)
        (root / DVC_FILE).unlink()  # written afresh, data.dvc reads as the ingest of `version` wrote it
        _dvc(root, "add", "-q", data_dir)
        if data_version(root) != version:
            raise DataError(
                f"checked out {version} but {data_dir}/ hashes to {data_version(root)}; run `dvc doctor`"
            )
    return version


def _dir_version(version: str) -> str:
    """A full md5 as data.dvc records a folder's (with `.dir`); anything else is a one-line error."""
    version = version.strip()
    if not MD5.match(version):
        raise DataError(
            f"data version {version!r}: not an md5; copy one from `bitune data versions` (a unique "
            "prefix works there)"
        )
    return version if version.endswith(".dir") else f"{version}.dir"


def _fetch(root: Path, dvc_file: str) -> subprocess.CompletedProcess[str]:
    """`dvc fetch` of what `dvc_file` names into the local cache; the caller checks the cache after.

    `dvc fetch` exits 0 when the remote lacks the version, and fails offline even when the cache has
    it: the version's files in the cache, not the exit status, say whether to go on.
    """
    return _dvc(root, "fetch", "-r", REMOTE_NAME, dvc_file, check=False)  # no -q: it hides the error


def materialise_version(root: Path, version: str, remote: str, dest: Path) -> list[str]:
    """Copy the files of data version `version` into the new folder `dest`; returns their paths in it.

    They come from the local cache, fetched from the remote first when the cache lacks any of them.
    data/ and data.dvc are never touched: the fetch reads a throwaway .dvc file naming `version` at a
    path nothing uses, deleted afterwards, so the cache gains only what `dvc fetch` adds. A version
    neither holds is the one-line error a checkout of it gives.
    """
    version = _dir_version(version)
    cache = cache_dir(root) if (root / ".dvc").is_dir() else root / ".dvc" / "cache"
    entries = _cached_entries(cache, version)
    if entries is None:
        ensure_repo(root, remote)
        cache = cache_dir(root)
        proc = _fetch_version(root, version)
        entries = _cached_entries(cache, version)
        if entries is None:
            raise DataError(_not_restorable(root, version, proc))
    dest.mkdir(parents=True)
    for relpath, md5 in entries:
        if Path(relpath).is_absolute() or ".." in Path(relpath).parts:
            raise DataError(f"data version {version}: its manifest names {relpath!r}, outside its folder")
        target = dest / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_object_path(cache, md5), target)  # a copy: cache files stay read-only, untouched
    return sorted(relpath for relpath, _ in entries)


def _cached_entries(cache: Path, version: str) -> list[tuple[str, str]] | None:
    """(relpath, md5) of each file of `version` when the cache holds its manifest and every file."""
    entries = _manifest_entries(version, [cache])
    if entries is None or not all(_object_path(cache, md5).is_file() for _, md5 in entries):
        return None
    return entries


def _fetch_version(root: Path, version: str) -> subprocess.CompletedProcess[str]:
    name = f".bitune-fetch-{uuid.uuid4().hex[:12]}"
    spec = root / f"{name}.dvc"
    spec.write_text(
        yaml.safe_dump({"outs": [{"md5": version, "hash": "md5", "path": name}]}, sort_keys=False)
    )
    try:
        return _fetch(root, spec.name)
    finally:
        spec.unlink(missing_ok=True)


def _not_restorable(root: Path, version: str, fetch: subprocess.CompletedProcess[str]) -> str:
    """Why `version` cannot be checked out here, and what can be done: a version git records (data.dvc
    history) was versioned elsewhere and never pushed, so only the machine that has it can help."""
    remote = _dvc(root, "config", "--local", f"remote.{REMOTE_NAME}.url", check=False).stdout.strip()
    where = f"the DVC remote {remote}" if remote else "the DVC remote"
    detail = f" ({_last_line(fetch)})" if fetch.returncode != 0 else ""
    if any(seen.md5.removesuffix(".dir") == version.removesuffix(".dir") for seen in _git_sightings(root)):
        return (
            f"data version {version} is recorded in git ({DVC_FILE} history) but its files were never "
            f"pushed to {where} and are not in the local cache{detail}, so it cannot be restored here; "
            "run `dvc push` on a machine that has it, or pick a version in the remote "
            "(`bitune data versions`)"
        )
    return (
        f"data version {version}: not in {where} or the local cache{detail}; pick a version in "
        "the remote from `bitune data versions`"
    )


def cache_dir(root: Path) -> Path:
    """The project's DVC cache (`.dvc/cache` unless `cache.dir` says otherwise)."""
    return Path(_dvc(root, "cache", "dir").stdout.strip() or root / ".dvc" / "cache")


def _write_spec(root: Path, version: str, data_dir: str) -> None:
    """A data.dvc naming only `version`: enough for `dvc fetch` and `dvc checkout` to restore it."""
    spec = {"outs": [{"md5": version, "hash": "md5", "path": data_dir}]}
    (root / DVC_FILE).write_text(yaml.safe_dump(spec, sort_keys=False))


@dataclass(frozen=True)
class Sighting:
    """One place a data version was seen: a git commit of data.dvc, the remote, an MLflow run."""

    md5: str
    when: datetime | None
    source: str


@dataclass
class KnownVersion:
    md5: str
    first_seen: datetime | None
    sources: list[str] = field(default_factory=list)
    files: list[str] | None = None  # from the version's manifest, when the cache or remote has it
    in_remote: bool | None = None  # None: the remote is not a local folder, so not listed here
    current: bool = False


def known_versions(root: Path, remote: str, sightings: Iterable[Sighting] = ()) -> list[KnownVersion]:
    """Every data version git, the remote and `sightings` know of, oldest first; the current one marked."""
    url = resolve_remote(root, remote)
    remote_dir = None if "://" in url else Path(url)
    found: dict[str, KnownVersion] = {}
    all_sightings = [*_git_sightings(root), *_remote_sightings(remote_dir), *sightings]
    current = data_version(root)
    if current:
        all_sightings.append(Sighting(current, None, DVC_FILE))
    for seen in all_sightings:
        md5 = seen.md5 if seen.md5.endswith(".dir") else f"{seen.md5}.dir"
        entry = found.setdefault(md5, KnownVersion(md5, None))
        if seen.source not in entry.sources:
            entry.sources.append(seen.source)
        if seen.when and (entry.first_seen is None or seen.when < entry.first_seen):
            entry.first_seen = seen.when
    cache = cache_dir(root) if (root / ".dvc").is_dir() else root / ".dvc" / "cache"
    for entry in found.values():
        entry.current = entry.md5 == current
        entry.files = _manifest(entry.md5, [cache, *([remote_dir] if remote_dir else [])])
        if remote_dir is not None:
            entry.in_remote = _object_path(remote_dir, entry.md5).is_file()
    oldest = datetime.max.replace(tzinfo=UTC)
    return sorted(found.values(), key=lambda v: (v.first_seen or oldest, v.md5))


def resolve_version(prefix: str, versions: Iterable[KnownVersion]) -> str:
    """A full md5 passes through; a prefix must match exactly one known version."""
    prefix = prefix.strip()
    if MD5.match(prefix):
        return prefix
    matches = sorted({v.md5 for v in versions if v.md5.startswith(prefix)}) if prefix else []
    if len(matches) == 1:
        return matches[0]
    what = (
        "no known data version" if not matches else f"{len(matches)} data versions ({', '.join(matches[:3])})"
    )
    raise DataError(f"data version {prefix!r}: {what} starts with it; see `bitune data versions`")


def _git_sightings(root: Path) -> list[Sighting]:
    """md5s that commits of data.dvc introduced, with the commit dates."""
    proc = subprocess.run(
        ["git", "log", "--format=commit %H %cI", "-p", "--", DVC_FILE],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        return []
    out: list[Sighting] = []
    when: datetime | None = None
    for line in proc.stdout.splitlines():
        if line.startswith("commit "):
            when = datetime.fromisoformat(line.split()[2])
        elif match := re.match(r"^\+-?\s*md5:\s*([0-9a-f]{32}(?:\.dir)?)\s*$", line):
            out.append(Sighting(match.group(1), when, "git"))
    return out


def _remote_sightings(remote_dir: Path | None) -> list[Sighting]:
    """Directory manifests in a local remote, dated by when they were pushed."""
    base = remote_dir / "files" / "md5" if remote_dir else None
    if base is None or not base.is_dir():
        return []
    return [
        Sighting(path.parent.name + path.name, datetime.fromtimestamp(path.stat().st_mtime, UTC), "remote")
        for path in sorted(base.glob("*/*.dir"))
    ]


def _object_path(store: Path, md5: str) -> Path:
    return store / "files" / "md5" / md5[:2] / md5[2:]


def _manifest(md5: str, stores: list[Path]) -> list[str] | None:
    entries = _manifest_entries(md5, stores)
    return None if entries is None else sorted(relpath for relpath, _ in entries)


def _manifest_entries(md5: str, stores: list[Path]) -> list[tuple[str, str]] | None:
    """(relpath, md5) of each file of directory version `md5`, from the first store holding its
    manifest; None when none does or it cannot be read."""
    for store in stores:
        path = _object_path(store, md5)
        if path.is_file():
            try:
                return [(str(entry["relpath"]), str(entry["md5"])) for entry in json.loads(path.read_text())]
            except (ValueError, KeyError, TypeError):
                return None
    return None
