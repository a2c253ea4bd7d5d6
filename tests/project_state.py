"""What a run that must not touch the user's data leaves exactly as it was, as one comparable value."""

from __future__ import annotations

from pathlib import Path

from tasks import dvc_store


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def data_state(root: Path) -> dict[str, object]:
    """data.dvc, data/ (names and bytes), the objects in the DVC cache and the remote, the top-level names.

    `.bitune` (run outputs, the retrain lock) is left out of the top level: a refused run may create it.
    """
    return {
        "data.dvc": (root / "data.dvc").read_bytes(),
        "data": _files(root / "data"),
        "cache": sorted(_files(dvc_store.cache_dir(root))),
        "remote": sorted(_files(root / ".dvc-storage")),
        "top_level": sorted(p.name for p in root.iterdir() if p.name != ".bitune"),
    }
