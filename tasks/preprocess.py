"""Stage 2, preprocess: split by seed, normalise, map labels, tokenize; cached by data version + params."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from prefect import task

from bitune.data.preprocess import LabelMap, tokenization_key, tokenize_splits
from bitune.data.sources import read_source
from bitune.data.splits import SPLIT_METHOD, make_splits
from bitune.data.validation import drop_label_conflicts
from bitune.model.classifier import check_tokenizer_fits, load_tokenizer
from bitune.model.files_check import check_model_files
from bitune.model.source import tokenizer_files_identity
from bitune.params import ModelParams, Params
from bitune.promotion import check_gate_metric_labels
from bitune.tuning.step_plan import check_step_plan

SPLITS = ("train", "validation", "test")

log = logging.getLogger("bitune")


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


def check_model(model: ModelParams) -> None:
    """`model.name_or_path` loads here: its files (`check_model_files`: folder, safetensors weights
    whose headers read whole, a hub id cached or reachable), then config and tokenizer, which must
    not have more tokens than the model embeds; otherwise a one-line ModelError with the fix."""
    check_model_files(model)
    check_tokenizer_fits(model, load_tokenizer(model))


def preprocess_fn(params: Params, data_md5: str, root: Path) -> PreparedData:
    data = params.data.model_copy(update={"source": "data"})
    frames = read_source(data, root / params.data.dir).frames
    rows = f"{data_md5}-{params.data.split.model_dump_json()}-{SPLIT_METHOD}"
    if params.data.label_conflicts == "drop":  # in the key only then: keys made before it stay valid
        frames, warning = drop_label_conflicts(frames)
        if warning:
            log.warning("data: %s", warning)
        rows += "-label-conflicts-dropped"
    # the split files keep the raw text: tokenization normalises it with this model's settings, and
    # the registry re-scores the champion on it with the champion's own settings
    splits = make_splits(frames, params.data.split)
    label_map = LabelMap.from_frames(splits, params.data.labels)
    check_gate_metric_labels(params.registry, label_map.labels)  # before any phase trains
    check_step_plan(params.strategy, len(splits["train"]), params.train.processes)
    key = tokenization_key(
        rows,
        params.model.name_or_path,
        params.preprocess,
        revision=params.model.revision,
        tokenizer_files=tokenizer_files_identity(params.model),
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
