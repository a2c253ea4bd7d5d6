"""DVC as the data version store: `data/` tracked by the top-level `data.dvc`, pushed to a remote.

Plain functions around the `dvc` command line (run in-process through `python -m dvc`, so the
project's own installed DVC is used); the data version everywhere is the md5 `data.dvc` records.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from bitune.errors import DataError

REMOTE_NAME = "bitune"


def _dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        raise DataError(f"dvc {' '.join(args)} failed in {root}: {last[:200]}")
    return proc


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
        Path(url).mkdir(parents=True, exist_ok=True)
    _dvc(root, "remote", "add", "--local", "--default", "--force", REMOTE_NAME, url)


def data_version(root: Path, dvc_file: str = "data.dvc") -> str | None:
    """The md5 `data.dvc` records for `data/`, or None before the first version."""
    path = root / dvc_file
    if not path.exists():
        return None
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or [{}]
    return outs[0].get("md5")


def add_and_push(root: Path, data_dir: str = "data") -> str:
    """Version `data/` and push it to the remote; returns the data version (md5)."""
    _dvc(root, "add", "-q", data_dir)
    version = data_version(root)
    if version is None:
        raise DataError(f"{root / 'data.dvc'}: dvc add wrote no md5; check that {data_dir}/ is not empty")
    _dvc(root, "push", "-q", "-r", REMOTE_NAME)
    return version


def remote_has_current(root: Path) -> bool:
    """`dvc status -c`: True when the remote holds everything `data.dvc` references."""
    proc = _dvc(root, "status", "-c", "--json", "-r", REMOTE_NAME)
    return json.loads(proc.stdout or "{}") == {}


def checkout(root: Path, version: str) -> None:
    """Restore `data/` to `version`: rewrite data.dvc's md5 and pull from the remote."""
    dvc_file = root / "data.dvc"
    spec = yaml.safe_load(dvc_file.read_text())
    spec["outs"][0]["md5"] = version
    spec["outs"][0].pop("size", None)
    spec["outs"][0].pop("nfiles", None)
    dvc_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    proc = _dvc(root, "pull", "-q", "-r", REMOTE_NAME, check=False)
    if proc.returncode != 0:
        raise DataError(f"data version {version}: not found in the DVC remote; list versions with `bitune data versions`")
    _dvc(root, "checkout", "-q", "--force")
