"""The prepared folder: one per tokenization key, the split files and tokenized splits every later
stage reads (`bitune.data.prepare_splits` writes it).

Standard library only: `bitune promote`/`compare` find local test splits through `PREPARED` and must
start in a second; `datasets` is imported where rows are loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREPARED = Path(".bitune") / "prepared"  # in the project: one folder per tokenization key
SPLITS = ("train", "validation", "test")
TOKENIZED = "tokenized"  # the folder of the tokenized splits, inside the prepared folder


@dataclass(frozen=True)
class PreparedData:
    """Where the prepared splits live; everything downstream reads from this folder."""

    folder: str
    labels: list[str]
    sizes: dict[str, int]
    key: str
    truncation: dict[str, float] = field(default_factory=dict)  # share of texts cut at max_length

    @property
    def tokenized(self) -> Path:
        return Path(self.folder) / TOKENIZED

    def split_file(self, split: str) -> Path:
        return Path(self.folder) / f"{split}.parquet"


def prepared_folder(root: Path, key: str) -> Path:
    """The prepared folder of tokenization key `key` in the project at `root`."""
    return root / PREPARED / key


def load_rows(prepared: PreparedData, split: str) -> list[dict[str, Any]]:
    """One split's tokenized rows (input_ids, attention_mask, labels), as the training loop takes them."""
    import datasets

    dataset = datasets.load_from_disk(str(prepared.tokenized))[split]
    return dataset.select_columns(["input_ids", "attention_mask", "labels"]).to_list()
