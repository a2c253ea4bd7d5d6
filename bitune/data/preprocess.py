"""Frames -> tokenized datasets: text normalisation, the label map, tokenization with a disk cache.

No padding here: the collator pads each batch to its longest row, which on short reviews is far
less work than padding everything to `max_length`. The cache is keyed by `tokenization_key` (data
version, tokenizer, preprocess params), so changing any of them re-tokenizes and nothing else does.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from bitune.digest import json_digest
from bitune.errors import DataError
from bitune.params import PreprocessParams

if TYPE_CHECKING:
    import datasets

# `datasets` is imported where it is used: the served model imports `normalise_texts` from here and
# ships without it (tasks/logged_model.py SERVING_REQUIREMENTS).

CACHE_FORMAT = 1  # bump when the columns or their meaning change: old caches then miss
# The tokenized cache's label map, in id order: a hit needs the same one (`_is_hit`). The only label
# file of a prepared folder; the model's labels travel in its own `bitune.json`.
LABELS_FILE = "label_map.json"


def normalise_texts(texts: pd.Series, pre: PreprocessParams) -> pd.Series:
    """The same normalisation at training and at prediction time; index and order kept."""
    out = texts.astype(str)
    if pre.normalize_whitespace:
        out = out.str.replace(r"\s+", " ", regex=True)
    if pre.strip:
        out = out.str.strip()
    if pre.lowercase:
        out = out.str.lower()
    return out


@dataclass(frozen=True)
class LabelMap:
    """Label names in id order; it travels with the model so predictions come back as names."""

    labels: tuple[str, ...]

    def id_of(self, label: str) -> int:
        try:
            return self.labels.index(label)
        except ValueError:
            raise DataError(f"label {label!r} is not one of {list(self.labels)}; check data.labels") from None

    def label_of(self, i: int) -> str:
        if not 0 <= i < len(self.labels):
            raise DataError(
                f"label id {i} is out of range 0..{len(self.labels) - 1} for labels {list(self.labels)}"
            )
        return self.labels[i]

    @classmethod
    def from_frames(cls, frames: dict[str, pd.DataFrame], labels: list[str] | None) -> LabelMap:
        """`labels` (data.labels) in its order when given; else the sorted labels found."""
        if labels:
            return cls(tuple(labels))
        found = set().union(*(set(f["label"].dropna().astype(str)) for f in frames.values()))
        return cls(tuple(sorted(found)))


def tokenization_key(
    data_version: str,
    tokenizer_name: str,
    pre: PreprocessParams,
    revision: str | None = None,
    tokenizer_files: str | None = None,
) -> str:
    """Short hash naming the cache folder of one tokenization.

    `revision` (model.revision) and `tokenizer_files` (a local folder's tokenizer files, see
    `tokenizer_files_identity`) are hashed only when set, so keys made without them stay valid.
    """
    payload: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "data": data_version,
        "tokenizer": tokenizer_name,
        "preprocess": pre.model_dump(mode="json"),
    }
    if revision is not None:
        payload["revision"] = revision
    if tokenizer_files is not None:
        payload["tokenizer_files"] = tokenizer_files
    return json_digest(payload)


def tokenize_splits(
    frames: dict[str, pd.DataFrame],
    tokenizer: Any,
    pre: PreprocessParams,
    label_map: LabelMap,
    cache_dir: Path | None,
    cache_key: str,
) -> datasets.DatasetDict:
    """Columns input_ids, attention_mask, labels, length per split; loaded from cache_dir/cache_key on a hit.

    A hit also needs the same label map (it is not part of the key, and data.labels can reorder it).
    """
    import datasets

    target = cache_dir / cache_key if cache_dir is not None else None
    if target is not None and _is_hit(target, label_map):
        return datasets.load_from_disk(str(target))
    tokenized = datasets.DatasetDict(
        {split: _tokenize(split, frame, tokenizer, pre, label_map) for split, frame in frames.items()}
    )
    if target is None:
        return tokenized
    _save(tokenized, target, label_map)
    return datasets.load_from_disk(str(target))


def _tokenize(
    split: str, frame: pd.DataFrame, tokenizer: Any, pre: PreprocessParams, label_map: LabelMap
) -> datasets.Dataset:
    import datasets
    from datasets.table import InMemoryTable

    table = pd.DataFrame(
        {
            "text": normalise_texts(frame["text"], pre).tolist(),
            "labels": [label_map.id_of(str(label)) for label in frame["label"]],
        }
    )
    source = _content_fingerprint(table)
    dataset = datasets.Dataset(InMemoryTable.from_pandas(table, preserve_index=False), fingerprint=source)

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        encoded = tokenizer(
            batch["text"],
            truncation=True,
            max_length=pre.max_length,
            padding=False,
            return_token_type_ids=False,
        )
        return {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "length": [len(ids) for ids in encoded["input_ids"]],
        }

    return dataset.map(
        encode,
        batched=True,
        remove_columns=["text"],
        desc=f"tokenize {split}",
        new_fingerprint=_digest(
            [
                source,
                split,
                getattr(tokenizer, "name_or_path", ""),
                len(tokenizer),
                pre.model_dump(mode="json"),
            ]
        ),
    )


def _content_fingerprint(table: pd.DataFrame) -> str:
    """Both fingerprints `datasets` would compute are given explicitly, so it never hashes with dill.

    dill's hashing of functions (our `encode` closure, and the helper it pickles an Arrow table
    with) runs `dis.dis` into a swapped `sys.stdout`; under Prefect's `log_prints` each bytecode
    line then lands in the run log, thousands of them.
    """
    rows = pd.util.hash_pandas_object(table, index=False).to_numpy()
    return _digest([CACHE_FORMAT, list(table.columns), hashlib.sha256(rows.tobytes()).hexdigest()])


def _digest(payload: list[Any]) -> str:
    return json_digest(payload)


def _is_hit(target: Path, label_map: LabelMap) -> bool:
    labels_file = target / LABELS_FILE
    if not labels_file.is_file():
        return False
    return json.loads(labels_file.read_text()) == list(label_map.labels)


def _save(tokenized: datasets.DatasetDict, target: Path, label_map: LabelMap) -> None:
    """Write to a temp sibling, then rename: an interrupted save is never mistaken for a hit."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenized.save_to_disk(str(staging))
        (staging / LABELS_FILE).write_text(json.dumps(list(label_map.labels)))
        if target.exists():  # a stale entry (other label map): replace it
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
