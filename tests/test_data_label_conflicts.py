"""data.label_conflicts, for real: the data step versions every row as the source has it, and
preprocessing drops the rows of texts with more than one label before splitting (a real DVC repo,
`version_data_fn` then `prepare_splits` on a tiny BERT's tokenizer)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, make_project, tiny_overrides

from bitune.data.demo import make_demo_frame
from bitune.data.prepare_splits import prepare_splits
from bitune.data.prepared import SPLITS
from bitune.errors import DataError
from bitune.params import load_params
from tasks.data import version_data_fn

pytestmark = pytest.mark.slow


def test_drop_keeps_the_data_version_whole_and_drops_the_rows_before_splitting(
    tmp_path: Path, tiny_bert_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_project(tmp_path / "project", Path())
    frame = make_demo_frame(120, 3)
    first, second = frame.loc[0], frame.loc[1]
    twice, thrice = first["text"], second["text"]  # 2 and 3 rows, two labels each
    flip = {"positive": "negative", "negative": "positive"}
    conflicts = pd.DataFrame(
        {
            "text": [twice, thrice, thrice],
            "label": [flip[first["label"]], second["label"], flip[second["label"]]],
        }
    )
    source = tmp_path / "reviews.csv"
    pd.concat([frame, conflicts], ignore_index=True).rename(columns={"text": "review"}).to_csv(
        source, index=False
    )
    base = [*tiny_overrides(tiny_bert_dir), f"data.source={source}", "data.text_column=review"]

    refused = load_params(REPO / "params" / "default.yaml", base)
    conflicts_named = r"^reviews\.csv: 2 texts have more than one label.*set data.label_conflicts: drop"
    with pytest.raises(DataError, match=conflicts_named):
        version_data_fn(refused.data, root)
    assert not (root / "data.dvc").exists()

    params = load_params(REPO / "params" / "default.yaml", [*base, "data.label_conflicts=drop"])
    with caplog.at_level(logging.WARNING, logger="bitune"):
        version = version_data_fn(params.data, root)
        prepared = prepare_splits(params, version.md5, root)
    assert version.stats["rows"] == 123 and version.stats["conflicting_texts"] == 2
    stored = pd.read_csv(root / "data" / "reviews.csv")
    assert len(stored) == 123 and (stored["text"] == thrice).sum() == 3  # the version keeps every row
    split_texts = pd.concat([pd.read_parquet(prepared.split_file(name)) for name in SPLITS])["text"]
    assert sum(prepared.sizes.values()) == len(split_texts) == 118
    assert not split_texts.isin([twice, thrice]).any()
    assert "their 5 rows are dropped before splitting (data.label_conflicts: drop)" in caplog.text
    assert "dropped 5 rows of 2 texts with more than one label" in caplog.text

    kept = prepare_splits(params.model_copy(update={"data": refused.data}), version.md5, root)
    assert kept.key != prepared.key and sum(kept.sizes.values()) == 123  # all rows: another folder
