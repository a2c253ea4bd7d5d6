"""The params checked against the model's structure before the data step: what would otherwise fail
mid-run, after data.dvc and the remote had changed, or only once a long enough text came along.

The model is built from its config on the meta device (no memory, no weights, a fraction of a
second), and the same functions the phases use resolve its groups, so the preflight and the run
cannot disagree.
"""

from __future__ import annotations

import torch

from bitune.errors import ModelError, ParamsError, first_line
from bitune.model.classifier import BituneClassifier, max_input_tokens, meta_backbone
from bitune.model.layer_groups import check_layer_slices, resolve_layer_groups
from bitune.params import Params
from bitune.tuning.freezing import trainable_modules
from bitune.tuning.guards import require_parameters
from bitune.tuning.schedule import expand_strategy


def check_params_fit_model(params: Params) -> None:
    """A one-line error for a model bitune cannot tune (no encoder layout), a `preprocess.max_length`
    past its position embeddings, or a phase whose groups hold no parameters in it."""
    try:
        backbone = meta_backbone(params.model)
    except ModelError:
        raise
    except Exception as exc:  # remote code or a config the library cannot build: not a bitune bug
        first = first_line(exc, 160)
        raise ModelError(
            f"model.name_or_path: cannot build {params.model.name_or_path} from its config ({first}); "
            "point it at an encoder model folder or hub id"
        ) from None
    try:
        groups = resolve_layer_groups(backbone)
    except ModelError as exc:
        kind = getattr(backbone.config, "model_type", "unknown")
        raise ModelError(
            f"model.name_or_path: {params.model.name_or_path} is a {kind} model: {exc}"
        ) from None
    check_layer_slices(params.strategy, len(groups.layers))  # named by their field (ALBERT has one)
    limit = max_input_tokens(backbone)
    if limit is not None and params.preprocess.max_length > limit:
        raise ParamsError(
            f"preprocess.max_length: {params.preprocess.max_length} tokens, but {params.model.name_or_path} "
            f"has positions for {limit}; set preprocess.max_length={limit} or less"
        )
    with torch.device("meta"):
        model = BituneClassifier(backbone, 2, params.model.pooling, params.model.dropout)
    for run in expand_strategy(params.strategy):
        require_parameters(trainable_modules(model, run.spec.train, groups), run)
