"""Which pretrained model a run trains from, by content: part of the key that says a run is new.

`model_identity` (feature-cache keys) stamps files by size and mtime, which is cheap but changes
whenever a virtual environment is rebuilt. The pipeline key must instead stay put across reinstalls
(an unchanged project should skip) and change when a local folder is overwritten in place with other
weights of the same size, so it hashes the bytes. About 0.1 s for all-MiniLM-L6-v2's 90 MB.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from bitune.model.source import (
    TOKENIZER_FILES,
    WEIGHT_SUFFIXES,
    hub_snapshot,
    resolve_model_source,
)
from bitune.params import ModelParams


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def pretrained_content_digest(model: ModelParams) -> str:
    """Short hash of the pretrained model's config, weights and tokenizer files.

    A local folder (bundled models included) is hashed by content. A hub id is keyed by the commit
    its revision resolves to in the local Hugging Face cache (the run's preflight has loaded its
    tokenizer and config by then), or by its name and revision where nothing is cached.
    """
    digest = hashlib.sha256()
    folder = Path(resolve_model_source(model.name_or_path))
    if (folder / "config.json").is_file():
        names = ("config.json", *TOKENIZER_FILES)
        files = sorted(p for p in folder.iterdir() if p.name in names or p.name.endswith(WEIGHT_SUFFIXES))
        for path in files:
            digest.update(f"{path.name}:{_file_sha256(path)}\n".encode())
    else:
        snapshot = hub_snapshot(model)
        digest.update(f"{model.name_or_path}@{snapshot or model.revision}".encode())
    return digest.hexdigest()[:16]
