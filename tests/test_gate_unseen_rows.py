"""The gate's choice of test rows: none the champion trained or chose its epoch on.

Pure parts (fingerprints, row mask, reasons, tags) in milliseconds; the record a saved classifier
carries, on a tiny BERT folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_models import save_tiny_bert
from transformers import AutoModel, AutoTokenizer

from bitune.data.seen import seen_text_keys, split_digest, text_key_fingerprints
from bitune.errors import ModelError
from bitune.evaluation.unseen import gate_rows
from bitune.model.classifier import (
    SEEN_FILE,
    BituneClassifier,
    ClassifierMeta,
    load_classifier,
    load_seen_text_keys,
    save_classifier,
)
from bitune.params import ModelParams, PreprocessParams, RegistryParams
from bitune.promotion import decide

TEXTS = ["Great film", "awful plot", "fine acting", "dull", "loved it", "hated it"]
LABELS = ["pos", "neg", "pos", "neg", "pos", "neg"]


def test_fingerprints_follow_the_split_key_not_case_or_spacing() -> None:
    a, b, c = text_key_fingerprints(["Great  film", " great film ", "great films"])
    assert a == b != c
    keys = seen_text_keys(["b", "a", "B", "a"])
    assert keys.dtype == np.int64 and len(keys) == 2 and list(keys) == sorted(keys)


def test_seen_rows_are_left_out_and_the_reason_says_how_many() -> None:
    rows = gate_rows(TEXTS, LABELS, seen_text_keys(["GREAT film", "dull", "not a test row"]))
    assert rows.keep.tolist() == [False, True, True, False, True, True]
    assert (rows.total, rows.kept, rows.excluded) == (6, 4, 2)
    assert rows.note() == "compared on 4 of 6 test rows: 2 were in the champion's training data"
    assert rows.tags() == {"bitune.gate_test_rows": "4", "bitune.gate_excluded_rows": "2"}
    assert rows.problem("test/macro_f1", "7") is None


def test_nothing_seen_adds_no_reason() -> None:
    rows = gate_rows(TEXTS, LABELS, seen_text_keys(["elsewhere"]))
    assert rows.excluded == 0 and rows.note() is None
    decision = decide({"test/macro_f1": 0.6}, {"test/macro_f1": 0.5}, RegistryParams())
    assert rows.annotate(decision) == decision


def test_a_champion_without_a_record_is_compared_on_all_rows_and_the_reason_says_so() -> None:
    rows = gate_rows(TEXTS, LABELS, None)
    assert rows.kept == 6 and rows.tags()["bitune.gate_excluded_rows"] == "unknown"
    decision = rows.annotate(decide({"test/macro_f1": 0.6}, {"test/macro_f1": 0.5}, RegistryParams()))
    assert decision.promote
    assert decision.reasons[0].startswith("compared on all 6 test rows: the champion has no record")


def test_the_annotated_decision_leads_with_the_rows() -> None:
    rows = gate_rows(TEXTS, LABELS, seen_text_keys(["dull"]))
    decision = rows.annotate(decide({"test/macro_f1": 0.4}, {"test/macro_f1": 0.5}, RegistryParams()))
    assert not decision.promote
    assert decision.summary().startswith("keep champion: compared on 5 of 6 test rows: 1 was in")
    assert "test/macro_f1 0.4000 vs champion 0.5000" in decision.summary()


def test_no_unseen_rows_keeps_the_champion_and_says_how_to_fix_it() -> None:
    rows = gate_rows(TEXTS, LABELS, seen_text_keys(TEXTS))
    assert rows.kept == 0
    problem = rows.problem("test/loss", "7")
    assert problem is not None
    assert problem.startswith("all 6 test rows were in the champion's training data")
    assert "keep data.split" in problem and "`bitune promote 7 --force`" in problem


@pytest.mark.parametrize(
    ("metric", "blocked"),
    [
        ("test/macro_f1", True),  # averages over labels: one fewer label is another average
        ("test/f1/neg", True),
        ("test/f1/pos", False),
        ("test/loss", False),
        ("test/accuracy", False),
    ],
)
def test_a_label_with_no_unseen_rows_blocks_the_metrics_that_need_it(metric: str, blocked: bool) -> None:
    rows = gate_rows(TEXTS, LABELS, seen_text_keys(["awful plot", "DULL", "hated it"]))
    assert rows.lost_labels() == ["neg"] and rows.kept == 3
    problem = rows.problem(metric, "3")
    assert (problem is not None) == blocked
    if blocked:
        assert problem is not None and problem.startswith("every test row of label 'neg' was in")
        assert metric in problem and "`bitune promote 3 --force`" in problem


@pytest.fixture(scope="module")
def classifier_parts(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[BituneClassifier, object, ClassifierMeta]:
    base = save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
    model = BituneClassifier(AutoModel.from_pretrained(base), 2, "mean", 0.0)
    meta = ClassifierMeta.for_training(
        ["neg", "pos"], ModelParams(name_or_path=str(base)), PreprocessParams()
    )
    return model, AutoTokenizer.from_pretrained(base), meta


def test_a_saved_classifier_carries_the_texts_it_has_seen(classifier_parts, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, tokenizer, meta = classifier_parts
    folder = save_classifier(model, tokenizer, meta, tmp_path / "model", seen_texts=["b", "A", "a "])
    keys = load_seen_text_keys(folder)
    assert keys is not None and keys.dtype == np.int64
    assert keys.tolist() == seen_text_keys(["a", "b"]).tolist()
    load_classifier(folder)  # the extra file does not disturb loading

    # saved again without texts (another model in the same folder): no stale record is left behind
    save_classifier(model, tokenizer, meta, folder)
    assert not (folder / SEEN_FILE).exists() and load_seen_text_keys(folder) is None


def test_an_unreadable_record_is_a_one_line_model_error(tmp_path: Path) -> None:
    (tmp_path / SEEN_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ModelError, match=rf"{SEEN_FILE}: unreadable .*; delete it or save the model again$"):
        load_seen_text_keys(tmp_path)


def test_split_digest_is_the_rows_not_their_order() -> None:
    texts, labels = ["A good film.", "a bad film", "fine"], ["pos", "neg", "pos"]
    digest = split_digest(texts, labels)
    assert len(digest) == 16
    assert split_digest(texts[::-1], labels[::-1]) == digest
    assert split_digest(["a  GOOD film.", "A bad film", "fine "], labels) == digest  # the split's own key
    assert split_digest(texts, ["pos", "neg", "neg"]) != digest  # a relabelled row
    assert split_digest(texts[:2], labels[:2]) != digest  # a row gone
    with pytest.raises(ValueError, match="3 texts but 2 labels"):
        split_digest(texts, labels[:2])
