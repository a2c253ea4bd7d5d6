"""Scoring a split prints nothing: `bitune run` showed an `evaluate:` bar after every epoch, for the
test split and for the champion's re-score, on top of the training bars that say where a run is."""

from __future__ import annotations

import random

import pytest
import torch
from tiny_models import save_tiny_bert, tiny_backbone
from transformers import AutoModel, AutoTokenizer

from bitune.device import make_accelerator
from bitune.evaluation.rescore import score_texts
from bitune.model.classifier import BituneClassifier, ClassifierMeta
from bitune.model.layer_groups import resolve_layer_groups
from bitune.params import ModelParams, PhaseSpec, PreprocessParams, TrainParams
from bitune.tuning.phase import PhaseContext, PhaseData, predict_logits, run_phase
from bitune.tuning.schedule import PhaseRun


def toy_rows(n: int) -> list[dict]:
    rng = random.Random(0)
    out = []
    for i in range(n):
        ids = [2] + [rng.randint(10, 100) for _ in range(rng.randint(4, 12))] + [3]
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": i % 2})
    return out


def context(model: BituneClassifier, **kw) -> PhaseContext:  # type: ignore[no-untyped-def]
    pretrained = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    accelerator = make_accelerator(TrainParams(device="cpu"))
    return PhaseContext(
        accelerator, resolve_layer_groups(model.backbone), pretrained, eval_batch_size=4, **kw
    )


def tiny_classifier() -> BituneClassifier:
    torch.manual_seed(0)
    return BituneClassifier(tiny_backbone("bert"), 2, "mean", 0.0)


def test_evaluating_a_split_writes_nothing_to_the_terminal(capfd: pytest.CaptureFixture[str]) -> None:
    model = tiny_classifier()
    logits = predict_logits(model, toy_rows(20), context(model), pad_token_id=0)  # ctx.progress on
    assert logits.shape == (20, 2)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")


def test_the_evaluation_bar_is_there_when_asked_for(capfd: pytest.CaptureFixture[str]) -> None:
    model = tiny_classifier()
    predict_logits(model, toy_rows(20), context(model), pad_token_id=0, progress=True)
    assert "evaluate" in capfd.readouterr().err
    predict_logits(model, toy_rows(20), context(model, progress=False), pad_token_id=0, progress=True)
    assert capfd.readouterr().err == ""  # a quiet context wins


def test_rescoring_texts_writes_nothing_to_the_terminal(
    tmp_path_factory: pytest.TempPathFactory, capfd: pytest.CaptureFixture[str]
) -> None:
    base = save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
    model = BituneClassifier(AutoModel.from_pretrained(base), 2, "mean", 0.0)
    meta = ClassifierMeta.for_training(
        ["neg", "pos"], ModelParams(name_or_path=str(base)), PreprocessParams()
    )
    capfd.readouterr()  # what loading printed is not the scoring's
    logits = score_texts(
        model, AutoTokenizer.from_pretrained(base), meta, ["a good film"] * 9, context(model)
    )
    assert logits.shape == (9, 2)
    assert capfd.readouterr().err == ""


def test_a_phase_shows_its_epoch_bar_but_no_evaluate_bar(capfd: pytest.CaptureFixture[str]) -> None:
    model = tiny_classifier()
    spec = PhaseSpec(
        name="bottom", train=["embeddings", "layers[0:2]", "head"], epochs=2, lr=1e-3, batch_size=8
    )
    data = PhaseData(train=toy_rows(32), validation=toy_rows(12), pad_token_id=0)
    run_phase(model, PhaseRun(index=0, round=0, spec=spec), data, context(model))
    err = capfd.readouterr().err
    assert "bottom epoch 1/2" in err  # the training bar still shows where the run is
    assert "evaluate" not in err


def test_the_feature_encoding_bar_follows_quiet(capfd: pytest.CaptureFixture[str]) -> None:
    """Every DDP rank encodes the features; only the local main process (not quiet) may draw a bar."""
    from bitune.tuning.features import encode_rows

    model = tiny_classifier()
    encode_rows(model, toy_rows(20), 4, 0, torch.device("cpu"), quiet=True)
    assert capfd.readouterr().err == ""
    encode_rows(model, toy_rows(20), 4, 0, torch.device("cpu"))
    assert "encode features" in capfd.readouterr().err
