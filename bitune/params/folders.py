"""The folders params name for a run to write into, checked before any work starts.

A checkpoint folder that cannot be created used to fail the bottom phase after the data step had
versioned new data, as an "unexpected FileNotFoundError"; checking first fails in one line that
names the key, with nothing changed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bitune.errors import ParamsError
from bitune.params.models import Params


def written_folders(params: Params, root: Path, tracking_server: bool = False) -> dict[str, Path]:
    """key -> the folder it names, anchored at the project root as the run anchors it.

    `tracking_server`: MLflow is a server (http), which keeps the artifacts itself, so
    tracking.artifact_location is not a folder here.
    """
    folders: dict[str, str | Path] = {"train.checkpoint_dir": params.train.checkpoint_dir}
    if params.train.feature_cache_dir is not None:
        folders["train.feature_cache_dir"] = params.train.feature_cache_dir
    artifacts = params.tracking.artifact_location
    if artifacts and not tracking_server and ("://" not in artifacts or artifacts.startswith("file://")):
        folders["tracking.artifact_location"] = artifacts.removeprefix("file://")
    return {key: root / Path(folder).expanduser() for key, folder in folders.items()}


def check_writable_folders(params: Params, root: Path, tracking_server: bool = False) -> None:
    """Each folder can be created and written; those this check created are removed again."""
    for key, folder in written_folders(params, root, tracking_server).items():
        check_writable(key, folder, FIXES.get(key, ""))


# MLflow fixes an experiment's artifact folder when it creates the experiment: pointing
# tracking.artifact_location elsewhere alone was refused again, by the experiment's own check.
FIXES = {
    "tracking.artifact_location": (
        "move it away, or point tracking.artifact_location at a writable folder and, for an experiment "
        "that exists already, set a new tracking.experiment too (an experiment keeps the folder it was "
        "created with)"
    )
}


def check_writable(key: str, folder: Path, fix: str = "") -> None:
    """`folder` can be created and written, or a ParamsError names `key` and `fix` (default: point
    `key` at a (writable) folder); nothing it created is left behind."""
    created: list[Path] = []  # deepest first, so they can be removed in order
    existing = folder
    while not existing.exists() and existing != existing.parent:
        created.append(existing)
        existing = existing.parent
    if not existing.is_dir():
        raise ParamsError(f"{key}: {existing} is a file, not a folder; {fix or f'point {key} at a folder'}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        fix = fix or f"point {key} at a writable folder"
        raise ParamsError(f"{key}: cannot write to {folder} ({exc.strerror or exc}); {fix}") from None
    finally:
        for path in created:
            if path.is_dir():
                try:
                    path.rmdir()
                except OSError:
                    break
