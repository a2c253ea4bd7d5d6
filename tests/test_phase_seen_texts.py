"""A trained phase's model folder records the texts it has seen (train and validation), so a later
promotion gate can leave them out of the champion's re-score. One real head phase on a tiny BERT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from conftest import REPO, tiny_overrides

from bitune.data.demo import make_demo_frame
from bitune.data.prepare_splits import prepare_splits
from bitune.data.seen import seen_text_keys, text_key_fingerprints
from bitune.model.classifier import load_seen_text_keys
from bitune.params import load_params
from bitune.tuning.train_phase import scheduled_phase, train_phase


def test_a_trained_phase_records_its_train_and_validation_texts(tmp_path: Path, tiny_bert_dir: Path) -> None:
    (tmp_path / "data").mkdir()
    make_demo_frame(60, 0).to_csv(tmp_path / "data" / "reviews.csv", index=False)
    params = load_params(
        REPO / "params" / "default.yaml", [*tiny_overrides(tiny_bert_dir), "strategy.phases.0.epochs=1"]
    )
    prepared = prepare_splits(params, "md5-of-the-data", tmp_path)
    output = train_phase(params, prepared, scheduled_phase(params, 0), None, tmp_path, "pipeline")

    keys = load_seen_text_keys(Path(output.model_dir))
    split = {
        name: pd.read_parquet(prepared.split_file(name))["text"] for name in ("train", "validation", "test")
    }
    assert keys is not None
    assert keys.tolist() == seen_text_keys([*split["train"], *split["validation"]]).tolist()
    assert not np.isin(text_key_fingerprints(split["test"]), keys).any()
