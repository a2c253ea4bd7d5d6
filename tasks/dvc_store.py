"""DVC as the data version store: `data/` tracked by the top-level `data.dvc`, pushed to a remote.

Plain functions around the `dvc` command line (run in-process through `python -m dvc`, so the
project's own installed DVC is used); the data version everywhere is the md5 `data.dvc` records.
Every function that rewrites `data.dvc` puts its exact bytes back when it fails, so a failed
ingest or checkout leaves the project as it was.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import yaml

from bitune.errors import DataError

REMOTE_NAME = "bitune"
DVC_FILE = "data.dvc"
MD5 = re.compile(r"^[0-9a-f]{32}(\.dir)?$")
# pushes every data version git records that the clone's cache holds, to its default remote (bitune's)
PUSH_ALL = "dvc push --all-commits"


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
    try:
        outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or [{}]
        return str(outs[0]["md5"]) if outs[0].get("md5") else None
    except (yaml.YAMLError, AttributeError, TypeError, KeyError, IndexError) as exc:
        detail = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise DataError(
            f"{path}: not a DVC file bitune can read ({detail}); if a git merge left conflict markers in "
            f"it, keep one side (`git checkout --ours {dvc_file}` or --theirs), then run again"
        ) from None


# Data folders a `data_kept_aside` block holds a copy of: `add_and_push` inside one leaves data/ to it.
_kept_aside: set[Path] = set()


@contextmanager
def data_kept_aside(root: Path, data_dir: str = "data") -> Iterator[None]:
    """On any exception: data/ back exactly as it was before the block (from a copy kept beside it, not
    through DVC, whose restore fails the way the push did, e.g. a missing plugin) and data.dvc back to
    its exact bytes (or gone, if it was). Wrap an ingest's write of data/ and `add_and_push` in it."""
    target = (root / data_dir).resolve()
    aside = _sibling(target, "old")
    if target.exists():
        shutil.copytree(target, aside, symlinks=False)
    _kept_aside.add(target)
    try:
        with _data_dvc_restored(root):
            yield
    except BaseException:
        _remove(target)
        if aside.exists():
            aside.rename(target)
        raise
    finally:
        _kept_aside.discard(target)
        _remove(aside)


def _data_dvc_restored(root: Path) -> AbstractContextManager[None]:
    """On any exception: data.dvc back to its exact bytes (or gone, if it was)."""
    return _file_restored(root / DVC_FILE)


def remote_setting_kept(root: Path) -> AbstractContextManager[None]:
    """On any exception: `.dvc/config.local` (the default remote `ensure_repo` points at `data.remote`)
    back to its exact bytes. A push to a new remote that failed left the config on it, and a bare
    `dvc push` or `dvc pull` went there until the next good run put it back."""
    return _file_restored(root / ".dvc" / "config.local")


@contextmanager
def _file_restored(path: Path) -> Iterator[None]:
    before = path.read_bytes() if path.exists() else None
    try:
        yield
    except BaseException:
        if before is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(before)
        raise


def add_and_push(root: Path, data_dir: str = "data") -> str:
    """Version `data/` and push it to the remote; returns the data version (md5).

    When `dvc add` or the push fails, data.dvc goes back to its exact bytes and data/ to what it was:
    a version that is not in the remote must not become the project's current one. Inside a
    `data_kept_aside` block that block restores data/; alone, data/ is rebuilt from the local cache's
    copy of the previous version (read and checked here, not by DVC), or left as it is when the cache
    lacks it.
    """
    previous = data_version(root)
    try:
        with _data_dvc_restored(root):
            _dvc(root, "add", "-q", data_dir)
            version = data_version(root)
            if version is None:
                raise DataError(
                    f"{root / DVC_FILE}: dvc add wrote no md5; check that {data_dir}/ is not empty"
                )
            proc = _dvc(root, "push", "-r", REMOTE_NAME, DVC_FILE, check=False)  # no -q: it hides the error
            if proc.returncode != 0:
                raise DataError(
                    f"cannot push data version {version} to the DVC remote ({_last_line(proc)}); check "
                    "data.remote and its credentials — data.dvc was left at the previous version"
                )
    except BaseException:
        if (root / data_dir).resolve() not in _kept_aside and previous is not None:
            _restore_from_cache(root, previous, data_dir)
        raise
    return version


def _restore_from_cache(root: Path, version: str, data_dir: str) -> None:
    """data/ rebuilt as `version` from the local cache when it holds every file intact; else untouched."""
    try:
        cache = cache_dir(root)
        entries = _cached_entries(cache, version)
        if entries is None or _damaged(cache, version, entries):
            return
        with _swapped_in(root / data_dir, lambda new: _copy_verified(cache, version, entries, new)):
            pass
    except (OSError, DataError):
        return  # the failure being raised says what went wrong; this restore is a best effort


def remote_has_current(root: Path) -> bool:
    """`dvc status -c`: True when the remote holds everything `data.dvc` references."""
    proc = _dvc(root, "status", "-c", "--json", "-r", REMOTE_NAME, DVC_FILE)
    return json.loads(proc.stdout or "{}") == {}


def folder_version(folder: Path) -> str | None:
    """The md5 `dvc add` would record for `folder`, from its bytes as they are now (DVC's own status
    trusts its state db, and says "not in cache" rather than "modified" for a version it lacks).
    None when the folder is missing or holds no file."""
    if not folder.is_dir():
        return None
    entries = [
        {"md5": _file_md5(path), "relpath": path.relative_to(folder).as_posix()}
        for path in folder.rglob("*")
        if path.is_file()
    ]
    if not entries:
        return None
    entries.sort(key=lambda entry: entry["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def has_local_changes(root: Path, data_dir: str = "data") -> bool:
    """True when data/ holds files and they are not the version `data.dvc` records."""
    current = data_version(root)
    here = folder_version(root / data_dir)
    return current is not None and here is not None and here != _as_dir(current)


def _refuse_unversioned(root: Path, data_dir: str, known: Iterable[str]) -> None:
    """Refuse when data/ holds files that are no data version bitune knows: a checkout would lose them.

    data/ may hold another version than data.dvc records (after a `git pull` of a teammate's data.dvc):
    that is no edit, it can be checked out again.
    """
    here = folder_version(root / data_dir)
    if here is None:
        return
    current = data_version(root)
    versions = {_as_dir(md5) for md5 in [current, *known, *(s.md5 for s in _git_sightings(root))] if md5}
    if here in versions:
        return
    raise DataError(
        f"{data_dir}/ holds edits that no data version records (its files hash to {here}; {DVC_FILE} "
        f"records {current or 'no version'}), and a checkout would discard them; version them with "
        "`bitune run --set data.source=data`, or pass --force to discard them"
    )


def checkout(
    root: Path, version: str, data_dir: str = "data", force: bool = False, known: Iterable[str] = ()
) -> str:
    """Restore data/ and data.dvc to `version` (an md5, with or without `.dir`) from the cache or remote.

    The version is fetched into the cache and every file checked against its manifest (by reading its
    bytes) before data/ is touched; the new data/ is built beside the old one, which is kept aside until
    the new one is in place and data.dvc written. data.dvc ends as `dvc add` writes it for that version.
    On any failure data.dvc keeps its exact bytes and data/ its content. Files in data/ that are no
    known version (data.dvc's, git's history of it, `known`) stop the checkout unless `force`.
    """
    version = _dir_version(version)
    if not force:
        _refuse_unversioned(root, data_dir, known)
    cache = cache_dir(root)
    entries = _verified_entries(root, cache, version, lambda: _fetch_version(root, version))
    with _data_dvc_restored(root):

        def fill(new: Path) -> None:
            _copy_verified(cache, version, entries, new)
            (root / DVC_FILE).unlink(missing_ok=True)  # written afresh, as the ingest of `version` wrote it

        with _swapped_in(root / data_dir, fill, after=lambda: _dvc(root, "add", "-q", data_dir)):
            if data_version(root) != version:
                raise DataError(
                    f"checked out {version} but {data_dir}/ hashes to {data_version(root)}; run `dvc doctor`"
                )
    return version


@contextmanager
def _swapped_in(
    target: Path, fill: Callable[[Path], None], after: Callable[[], object] = lambda: None
) -> Iterator[None]:
    """`target` replaced by a folder `fill` builds beside it; the old one is renamed aside, not deleted,
    until `after` and the block succeed, and renamed back on any failure (a kill leaves it beside
    `target`, named .NAME.bitune-old-*)."""
    new, aside = _sibling(target, "new"), _sibling(target, "old")
    try:
        new.mkdir(parents=True)
        fill(new)
        moved = target.exists() or target.is_symlink()
        if moved:
            target.rename(aside)
        try:
            new.rename(target)
            after()
            yield
        except BaseException:
            if moved:
                _remove(target)
                aside.rename(target)
            raise
    finally:
        _remove(new)
        _remove(aside)


def _sibling(target: Path, kind: str) -> Path:
    return target.parent / f".{target.name}.bitune-{kind}-{uuid.uuid4().hex[:12]}"


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def _as_dir(md5: str) -> str:
    return md5 if md5.endswith(".dir") else f"{md5}.dir"


def _file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _verified_entries(
    root: Path, cache: Path, version: str, fetch: Callable[[], subprocess.CompletedProcess[str]]
) -> list[tuple[str, str]]:
    """(relpath, md5) of `version`'s files, every one in the cache with the bytes its md5 says.

    The cache is tried first; what it lacks is fetched. A damaged copy already in the cache is dropped
    and fetched again; one that comes damaged from the remote is dropped (so no later `dvc` command
    trusts it) and is a one-line error naming the file. Nothing outside the cache changes.
    """
    entries = _cached_entries(cache, version)
    if entries is None or _damaged(cache, version, entries):
        for _, md5, _ in _damaged(cache, version, entries or []):  # dropped: fetched again below
            _object_path(cache, md5).unlink(missing_ok=True)
        proc = fetch()
        entries = _cached_entries(cache, version)
        if entries is None:
            manifest = _object_path(cache, version)
            if not manifest.is_file() or _file_md5(manifest) == version.removesuffix(".dir"):
                raise DataError(_not_restorable(root, version, proc))
            entries = []  # an unreadable manifest that does not hash to its md5: named as damaged below
    damaged = _damaged(cache, version, entries)
    if damaged:
        for _, md5, _ in damaged:
            _object_path(cache, md5).unlink(missing_ok=True)
        name, expected, actual = damaged[0]
        raise DataError(
            f"data version {version}: {name} from the DVC remote has md5 {actual}, not {expected}: the "
            "remote's copy is corrupt (nothing was changed here); restore it in the remote, or push the "
            "version again from a machine that has it (`dvc push`)"
        )
    return entries


def _damaged(cache: Path, version: str, entries: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """(file, expected md5, actual md5) of each of `version`'s cached objects, manifest first, whose
    bytes do not hash to their md5."""
    checks = [(f"its manifest ({version})", version), *entries]
    out = []
    for name, md5 in checks:
        path = _object_path(cache, md5)
        actual = _file_md5(path) if path.is_file() else "missing"
        if actual != md5.removesuffix(".dir"):
            out.append((name, md5, actual))
    return out


def _copy_verified(cache: Path, version: str, entries: list[tuple[str, str]], dest: Path) -> None:
    """Copy each file of `version` from the cache (checked by `_verified_entries`) into the existing
    folder `dest`."""
    for relpath, md5 in entries:
        if Path(relpath).is_absolute() or ".." in Path(relpath).parts:
            raise DataError(f"data version {version}: its manifest names {relpath!r}, outside its folder")
        target = dest / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_object_path(cache, md5), target)  # a copy: cache files stay read-only, untouched


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
    repo_ready = False

    def fetch() -> subprocess.CompletedProcess[str]:
        if not repo_ready:
            ensure_repo(root, remote)
        return _fetch_version(root, version)

    if _cached_entries(cache, version) is None:  # a fetch follows: DVC's cache folder once a repo exists
        ensure_repo(root, remote)
        cache, repo_ready = cache_dir(root), True
    entries = _verified_entries(root, cache, version, fetch)
    dest.mkdir(parents=True)
    _copy_verified(cache, version, entries, dest)
    return sorted(relpath for relpath, _ in entries)


def _cached_entries(cache: Path, version: str) -> list[tuple[str, str]] | None:
    """(relpath, md5) of each file of `version` when the cache (or a local remote, laid out the same
    way) holds its manifest and every file."""
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
    """Why `version` cannot be checked out here, and what can be done. A version git records (data.dvc
    history) was versioned somewhere, but whether it never reached the remote or was deleted from it
    since cannot be told apart: either way only a machine that has it can help."""
    remote = _dvc(root, "config", "--local", f"remote.{REMOTE_NAME}.url", check=False).stdout.strip()
    where = f"the DVC remote {remote}" if remote else "the DVC remote"
    detail = f" ({_last_line(fetch)})" if fetch.returncode != 0 else ""
    if any(seen.md5.removesuffix(".dir") == version.removesuffix(".dir") for seen in _git_sightings(root)):
        return (
            f"data version {version} is recorded in git ({DVC_FILE} history) but its files are not in "
            f"{where} (never pushed there, or deleted from it since) nor in the local cache{detail}, so it "
            "cannot be restored here; "
            f"run `{PUSH_ALL}` in a clone that has it (the one that versioned it), or pick a version in "
            "the remote (`bitune data versions`)"
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
    # every object of the version (manifest and files): what a checkout needs from one store or the other
    in_remote: bool | None = None  # None: the remote is not a local folder, so not looked into
    in_cache: bool = False  # this clone's DVC cache
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
        entry.in_cache = _cached_entries(cache, entry.md5) is not None
        if remote_dir is not None:
            entry.in_remote = _cached_entries(remote_dir, entry.md5) is not None
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
