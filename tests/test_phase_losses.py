"""What a phase minimises beyond plain cross-entropy: label smoothing and the supervised contrastive term."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from test_tuning_engine import DATA, context, model_for, phase

from bitune.tuning.batching import pad_batch
from bitune.tuning.contrastive import supervised_contrastive_loss
from bitune.tuning.phase import run_phase
from bitune.tuning.schedule import PhaseRun


def naive_loss(features: torch.Tensor, labels: list[int], temperature: float) -> float:
    """Khosla et al.'s L_out, written as a loop over anchors and positives."""
    z = torch.nn.functional.normalize(features, dim=-1)
    per_anchor = []
    for i in range(len(labels)):
        positives = [j for j in range(len(labels)) if j != i and labels[j] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp(float(z[i] @ z[k]) / temperature) for k in range(len(labels)) if k != i)
        per_anchor.append(
            -sum(math.log(math.exp(float(z[i] @ z[j]) / temperature) / denominator) for j in positives)
            / len(positives)
        )
    return sum(per_anchor) / len(per_anchor)


@pytest.mark.parametrize("temperature", [0.1, 0.5, 2.0])
def test_contrastive_loss_is_the_supervised_contrastive_definition(temperature: float) -> None:
    torch.manual_seed(0)
    features, labels = torch.randn(7, 5), [0, 1, 0, 1, 1, 2, 0]  # label 2 has no partner: not an anchor
    got = supervised_contrastive_loss(features, torch.tensor(labels), temperature)
    assert got.item() == pytest.approx(naive_loss(features, labels, temperature), rel=1e-5)


def test_contrastive_loss_is_low_when_labels_cluster_and_zero_without_pairs() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    clustered = torch.tensor([[1.0, 0.0]] * 3 + [[-1.0, 0.0]] * 3) + 0.01 * torch.randn(6, 2)
    mixed = clustered[[0, 3, 1, 4, 2, 5]]  # the same points, labels no longer clustered
    loss_clustered = supervised_contrastive_loss(clustered, labels, 0.1)
    assert loss_clustered < supervised_contrastive_loss(mixed, labels, 0.1)
    lonely = torch.randn(3, 4, requires_grad=True)
    loss = supervised_contrastive_loss(lonely, torch.tensor([0, 1, 2]), 0.1)
    loss.backward()  # a batch without a same-label pair still backpropagates (zeros), not an error
    assert loss.item() == 0.0 and lonely.grad is not None and not lonely.grad.any()


def label_separation(model: torch.nn.Module) -> float:
    """Mean cosine similarity of pooled features within a label minus across labels, on training rows."""
    batch = pad_batch(DATA.train, 0)
    with torch.no_grad():
        z = torch.nn.functional.normalize(model.encode(batch["input_ids"], batch["attention_mask"]), dim=-1)
    same = batch["labels"][:, None] == batch["labels"][None, :]
    similarity = z @ z.T
    return (similarity[same].mean() - similarity[~same].mean()).item()


def test_a_phase_with_the_contrastive_term_separates_the_labels_features_more() -> None:
    separations = []
    for weight in (0.0, 2.0):
        model = model_for()
        run_phase(model, PhaseRun(0, 1, phase(contrastive=weight, epochs=3, lr=3e-3)), DATA, context(model))
        separations.append(label_separation(model))
    assert separations[1] > separations[0] + 0.03  # measured: 0.12 vs 0.06


def test_contrastive_on_a_phase_that_trains_no_encoder_is_a_params_error() -> None:
    with pytest.raises(ValidationError, match="contrastive shapes the encoder's pooled features"):
        phase(name="head", train=["head", "pooler"], contrastive=1.0)


def confidence(model: torch.nn.Module) -> float:
    """Mean probability the model gives its predicted class on the training rows."""
    batch = pad_batch(DATA.train, 0)
    with torch.no_grad():
        logits = model(batch["input_ids"], batch["attention_mask"])
    return logits.softmax(-1).max(-1).values.mean().item()


@pytest.mark.parametrize(
    ("train", "lr", "epochs"),
    [(["head"], 0.3, 100), (["layers[0:2]", "head"], 3e-3, 10)],
    ids=["on-cached-features", "through-the-encoder"],
)
def test_label_smoothing_keeps_the_model_less_confident(train: list[str], lr: float, epochs: int) -> None:
    """With ε = 0.4 and two labels, smoothed cross-entropy is lowest at p = 1 − ε/2 = 0.8."""
    confidences = []
    for smoothing in (0.0, 0.4):
        model = model_for()
        spec = phase(train=train, epochs=epochs, lr=lr, schedule="constant", label_smoothing=smoothing)
        run_phase(model, PhaseRun(0, 1, spec), DATA, context(model))
        confidences.append(confidence(model))
    assert confidences[0] > 0.9  # measured: 0.92 (head), 0.998 (encoder)
    assert confidences[1] < 0.82  # measured: 0.75, 0.81
