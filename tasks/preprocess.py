"""Stage 2, preprocess: split by seed, normalise, map labels, tokenize; cached by data version + params.

The work is `bitune.data.prepare_splits`; this task hands on the prepared folder's reference.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from bitune.data.prepare_splits import check_gate_metric_in_data, prepare_splits
from bitune.data.prepared import PreparedData
from bitune.model.classifier import check_tokenizer_fits, load_tokenizer
from bitune.model.files_check import check_model_files
from bitune.params import ModelParams, Params


def check_model(model: ModelParams) -> None:
    """`model.name_or_path` loads here: its files (`check_model_files`: folder, safetensors weights
    whose headers read whole, a hub id cached or reachable), then config and tokenizer, which must
    not have more tokens than the model embeds; otherwise a one-line ModelError with the fix."""
    check_model_files(model)
    check_tokenizer_fits(model, load_tokenizer(model))


@task(name="preprocess")
def preprocess(params: Params, data_md5: str, root: str) -> PreparedData:
    return prepare_splits(params, data_md5, Path(root))


def check_gate_metric(params: Params, root: str) -> None:
    """Before the skip decision and `--force`'s reset: see `check_gate_metric_in_data`."""
    check_gate_metric_in_data(params, Path(root))
