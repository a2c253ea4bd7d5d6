"""The served model normalises texts as training did: the preprocess params travel in bitune.json.

A cased tokenizer with a lowercase-only vocabulary makes the difference visible: 'GREAT' is [UNK]
unless the text is lowercased first, as `preprocess.lowercase: true` did at training time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from tiny_models import save_tiny_bert
from transformers import AutoModel, BertTokenizerFast

from bitune.data.preprocess import LabelMap, tokenize_splits
from bitune.model.classifier import (
    META_FILE,
    BituneClassifier,
    ClassifierMeta,
    load_classifier,
    save_classifier,
)
from bitune.params import ModelParams, PreprocessParams

REPO = Path(__file__).resolve().parents[1]
MODEL_CODE = REPO / "tasks" / "serving" / "pyfunc_model.py"
TEXT = "  GREAT   movie "
LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BertTokenizerFast, PreprocessParams]:
    """A tiny classifier trained (so to speak) with lowercase: true, on a cased tokenizer."""
    base = save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
    tokenizer = BertTokenizerFast(vocab=str(base / "vocab.txt"), do_lower_case=False)
    pre = PreprocessParams(lowercase=True, max_length=16)
    torch.manual_seed(0)
    model = BituneClassifier(AutoModel.from_pretrained(base), len(LABELS), "mean", 0.0)
    with torch.no_grad():  # a head that reads the features, so different tokens give different scores
        model.head[1].weight.normal_(0, 0.3)
    meta = ClassifierMeta.for_training(LABELS, ModelParams(name_or_path=str(base)), pre)
    folder = save_classifier(model, tokenizer, meta, tmp_path_factory.mktemp("classifier") / "model")
    return folder, tokenizer, pre


def training_path_probs(folder: Path, tokenizer: BertTokenizerFast, pre: PreprocessParams) -> list[float]:
    """What the flow scores: normalise + tokenize as the preprocess step does, then the model."""
    frame = pd.DataFrame({"text": [TEXT], "label": ["positive"]})
    rows = tokenize_splits({"test": frame}, tokenizer, pre, LabelMap(tuple(LABELS)), None, "k")["test"]
    model, _, _ = load_classifier(folder)
    ids = torch.tensor(rows["input_ids"])
    assert tokenizer.unk_token_id not in ids.tolist()[0]  # 'great' after lowercasing
    with torch.inference_mode():
        return torch.softmax(model(ids, torch.tensor(rows["attention_mask"])), -1)[0].tolist()


def test_meta_stores_the_preprocess_params(saved: tuple[Path, BertTokenizerFast, PreprocessParams]) -> None:
    folder, _, pre = saved
    stored = json.loads((folder / META_FILE).read_text())
    assert (stored["lowercase"], stored["strip"], stored["normalize_whitespace"]) == (True, True, True)
    assert stored["max_length"] == 16
    assert load_classifier(folder)[2].preprocess() == pre


def test_meta_without_preprocess_loads_with_the_old_defaults(
    saved: tuple[Path, BertTokenizerFast, PreprocessParams], tmp_path: Path
) -> None:
    folder, _, _ = saved
    old = tmp_path / "old"
    old.mkdir()
    for file in folder.iterdir():
        (old / file.name).write_bytes(file.read_bytes())
    meta = json.loads((folder / META_FILE).read_text())
    for key in ("lowercase", "strip", "normalize_whitespace"):
        del meta[key]
    (old / META_FILE).write_text(json.dumps(meta))
    assert load_classifier(old)[2].preprocess() == PreprocessParams(max_length=16)


def test_pyfunc_predicts_as_the_training_path(
    saved: tuple[Path, BertTokenizerFast, PreprocessParams], tmp_path: Path
) -> None:
    folder, tokenizer, pre = saved
    expected = training_path_probs(folder, tokenizer, pre)
    raw = tokenizer([TEXT], return_tensors="pt")  # what serving saw before: 'GREAT' unknown
    assert tokenizer.unk_token_id in raw["input_ids"][0].tolist()
    model, _, _ = load_classifier(folder)
    with torch.inference_mode():
        unnormalised = torch.softmax(model(raw["input_ids"], raw["attention_mask"]), -1)[0].tolist()
    assert unnormalised != pytest.approx(expected, abs=1e-4)  # so the comparison below can fail

    target = tmp_path / "pyfunc"
    mlflow.pyfunc.save_model(
        path=str(target),
        python_model=str(MODEL_CODE),
        artifacts={"classifier": str(folder)},
        code_paths=[str(REPO / "bitune")],
    )
    served = mlflow.pyfunc.load_model(str(target)).predict(pd.DataFrame({"text": [TEXT]}))
    assert served[["prob_negative", "prob_positive"]].iloc[0].tolist() == pytest.approx(expected, abs=1e-5)


def test_served_model_imports_without_datasets() -> None:
    """The served model's requirements (tasks/logged_model.py) do not include `datasets`."""
    code = (
        "import sys; import runpy; runpy.run_path(sys.argv[1]); "
        "from bitune.data.preprocess import normalise_texts; "
        "assert 'datasets' not in sys.modules, 'datasets imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(MODEL_CODE)], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
