"""Stage 2, preprocess: split by seed, normalise, map labels, tokenize; cached by data version + params."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from prefect import task

from bitune.data.preprocess import LabelMap, normalise_texts, tokenization_key, tokenize_splits
from bitune.data.sources import read_source
from bitune.data.splits import make_splits
from bitune.model.classifier import load_tokenizer
from bitune.params import Params

SPLITS = ("train", "validation", "test")


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
        return Path(self.folder) / "tokenized"

    def split_file(self, split: str) -> Path:
        return Path(self.folder) / f"{split}.parquet"


def preprocess_fn(params: Params, data_md5: str, root: Path) -> PreparedData:
    data = params.data.model_copy(update={"source": "data"})
    raw = read_source(data, root / params.data.dir)
    splits = make_splits(raw.frames, params.data.split)
    for frame in splits.values():
        frame["text"] = normalise_texts(frame["text"], params.preprocess)
    label_map = LabelMap.from_frames(splits, params.data.labels)
    key = tokenization_key(
        f"{data_md5}-{params.data.split.model_dump_json()}", params.model.name_or_path, params.preprocess
    )
    folder = root / ".bitune" / "prepared" / key
    folder.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        splits[name].to_parquet(folder / f"{name}.parquet", index=False)
    (folder / "labels.json").write_text(json.dumps(label_map.to_dict(), indent=2))
    tokenizer = load_tokenizer(params.model)
    tokenized = tokenize_splits(splits, tokenizer, params.preprocess, label_map, folder, "tokenized")
    max_length = params.preprocess.max_length
    truncation = {
        n: sum(x >= max_length for x in tokenized[n]["length"]) / max(1, len(tokenized[n])) for n in SPLITS
    }
    return PreparedData(
        folder=str(folder),
        labels=list(label_map.labels),
        sizes={n: len(splits[n]) for n in SPLITS},
        key=key,
        truncation=truncation,
    )


@task(name="preprocess")
def preprocess(params: Params, data_md5: str, root: str) -> PreparedData:
    return preprocess_fn(params, data_md5, Path(root))
