"""Stage 2, preprocess: the versioned rows split by seed, label conflicts dropped when asked, the
label map, and each split written and tokenized into its prepared folder (`bitune.data.prepared`).

Not in `bitune.data.preprocess`: the served model imports that module (`normalise_texts`) and ships
without pandera, which reading and validating the source needs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from bitune.data.prepared import SPLITS, TOKENIZED, PreparedData, prepared_folder
from bitune.data.preprocess import LabelMap, tokenization_key, tokenize_splits
from bitune.data.sources import read_source
from bitune.data.splits import SPLIT_METHOD, make_splits
from bitune.data.validation import drop_label_conflicts
from bitune.model.classifier import load_tokenizer
from bitune.model.source import tokenizer_files_identity
from bitune.params import Params
from bitune.params.models import PER_CLASS_F1
from bitune.promotion import check_gate_metric_labels
from bitune.tuning.step_plan import check_step_plan

log = logging.getLogger("bitune")


def check_gate_metric_in_data(params: Params, root: Path) -> None:
    """`registry.metric: test/f1/<label>` against the labels of the data version in data/, before the
    run decides anything: a run that skips (nothing new to learn) said nothing of a typo there, and
    `--force` had already reset the finished phases when preprocessing refused it."""
    if not params.registry.metric.startswith(PER_CLASS_F1):
        return  # the rows are read only when a label is named
    frames = read_source(params.data.model_copy(update={"source": "data"}), root / params.data.dir).frames
    check_gate_metric_labels(params.registry, LabelMap.from_frames(frames, params.data.labels).labels)


def prepare_splits(params: Params, data_md5: str, root: Path) -> PreparedData:
    """Read data/ (version `data_md5`) in the project at `root` and write its prepared folder.

    The folder is named by `tokenization_key`: the rows (data version, split settings, whether label
    conflicts were dropped), the tokenizer and the preprocess params; an existing tokenization there is
    reused. Fails before anything trains when `registry.metric` names no label of the data or the
    strategy's step plan does not fit the train split.
    """
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
    folder = prepared_folder(root, key)
    folder.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        splits[name].to_parquet(folder / f"{name}.parquet", index=False)
    tokenizer = load_tokenizer(params.model)
    tokenized = tokenize_splits(splits, tokenizer, params.preprocess, label_map, folder, TOKENIZED)
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
