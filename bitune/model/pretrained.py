"""What every run starts from: the pretrained encoder a strategy must fit, and a snapshot of it.

The snapshot is what the bottom phase anchors to and what weight drift and CKA are measured against,
so it is taken from the pretrained weights before any saved phase output is loaded on top.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_model

from bitune.model.classifier import (
    WEIGHTS_FILE,
    BituneClassifier,
    encoder_num_layers,
    load_backbone,
)
from bitune.model.layer_groups import check_layer_slices
from bitune.params import Params


def build_model(
    params: Params, num_labels: int, weights: str | None
) -> tuple[BituneClassifier, dict[str, torch.Tensor]]:
    """The classifier on the pretrained encoder, plus a snapshot of the pretrained encoder weights.

    `weights`: a folder written by `save_classifier` (the previous phase's output) to continue from;
    None starts from the pretrained encoder and a fresh head.
    """
    backbone = load_backbone(params.model)
    pretrained = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    model = BituneClassifier(backbone, num_labels, params.model.pooling, params.model.dropout)
    if weights:
        load_model(model, str(Path(weights) / WEIGHTS_FILE))
    return model, pretrained


def check_strategy_fits_model(params: Params) -> None:
    """Fail before any training when a phase's `layers[i:j]` reaches past the model's layers.

    Reads the model's config only; the first phase calls it, and a flow may call it right after
    loading params. A config without a layer count is left to the phase's own check.
    """
    num_layers = encoder_num_layers(params.model)
    if num_layers is not None:
        check_layer_slices(params.strategy, num_layers)
