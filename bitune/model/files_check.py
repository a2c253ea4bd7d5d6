"""The pretrained model's files, checked before anything heavy loads: the first half of a run's preflight.

A mistyped path, a folder without safetensors weights or without a tokenizer vocabulary, a truncated
weights file, or a hub id that is neither cached (offline) nor reachable: each is a one-line
ModelError from file reads and the Hugging Face cache alone, without importing torch or
transformers. `bitune run` calls this before Prefect starts; the flow's preflight calls it too, then
loads the config and tokenizer (tasks/preprocess.py).
"""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError, safe_open

from bitune.errors import ModelError, first_line
from bitune.model.hub_reachable import check_hub_reachable
from bitune.model.source import VOCAB_FILES, check_model_folder, not_cached_offline, resolve_model_source
from bitune.params import ModelParams


def check_model_files(model: ModelParams) -> None:
    """A one-line ModelError for the first thing wrong with where `model.name_or_path` points."""
    source = resolve_model_source(model.name_or_path)
    check_model_folder(source)
    folder = Path(source).expanduser()
    if not folder.is_dir():  # a hub id
        offline = not_cached_offline(model)
        if offline is not None:
            raise offline
        check_hub_reachable(model)  # no network for an id to download: seconds, not a minute of retries
        return
    if not any(folder.glob("*.safetensors")):
        raise ModelError(
            f"model.name_or_path: {folder} has no safetensors weights (*.safetensors); save the model "
            "with save_pretrained(..., safe_serialization=True) or point at another folder"
        )
    check_weight_files(folder)
    if not any((folder / name).is_file() for name in VOCAB_FILES):
        # transformers 5 then builds a tokenizer of special tokens alone: every word [UNK], and the
        # run would train and register a model that never saw a word
        raise ModelError(
            f"model.name_or_path: {folder} has no tokenizer vocabulary (none of {', '.join(VOCAB_FILES)}); "
            "save it there with tokenizer.save_pretrained(...) or point at a folder that has one"
        )


def check_weight_files(folder: Path) -> None:
    """Fail in one line when a safetensors file in `folder` is cut short or is not safetensors at all.

    Reads each file's header only (the tensors are memory-mapped, not loaded; the numpy framework
    so that torch is not imported), so the preflight can catch a truncated download or copy before
    the data step versions anything; loading it later would fail mid-run with the library's own error.
    """
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="numpy"):
                pass
        except (SafetensorError, OSError) as exc:
            reason = first_line(exc)
            raise ModelError(
                f"model.name_or_path: {path} is not a readable safetensors file ({reason}); the file is "
                "probably truncated: copy or download it again, or save_pretrained the model anew"
            ) from None
