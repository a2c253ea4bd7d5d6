"""`preprocess.max_length` past the model's positions: said in the preflight, not as an index error
mid-run (after the data step, and only once a text that long came along)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import MAX_POSITION, MODEL_TYPES, tiny_backbone

from bitune.errors import ParamsError
from bitune.model.classifier import max_input_tokens
from bitune.model.pretrained import check_max_length_fits_model
from bitune.params import ModelParams, load_params

REPO = Path(__file__).resolve().parents[1]


def runs_at(backbone: torch.nn.Module, length: int) -> bool:
    ids = torch.full((1, length), 5)
    ids[0, 0] = 2
    try:
        with torch.no_grad():
            backbone(input_ids=ids, attention_mask=torch.ones_like(ids))
    except (IndexError, RuntimeError):
        return False
    return True


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_the_limit_is_the_longest_input_the_encoder_takes(model_type: str, tmp_path: Path) -> None:
    backbone = tiny_backbone(model_type).eval()
    backbone.save_pretrained(tmp_path)
    limit = max_input_tokens(ModelParams(name_or_path=str(tmp_path)))
    if limit is None:  # relative or rotary positions: longer than the config's 64 still runs
        assert model_type in ("deberta-v2", "modernbert")
        assert runs_at(backbone, 3 * MAX_POSITION)
    else:  # RoBERTa's positions start after its padding index: 63 of 64
        assert runs_at(backbone, limit) and not runs_at(backbone, limit + 1)


def test_a_max_length_past_the_limit_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    tiny_backbone("roberta").save_pretrained(tmp_path)
    model = f"model.name_or_path={tmp_path}"
    check_max_length_fits_model(
        load_params(REPO / "params/default.yaml", [model, "preprocess.max_length=63"])
    )
    params = load_params(REPO / "params/default.yaml", [model, "preprocess.max_length=64"])
    with pytest.raises(
        ParamsError, match=r"^preprocess.max_length: 64 tokens, but .* has positions for 63; set "
    ):
        check_max_length_fits_model(params)


def test_the_bundled_model_takes_512_tokens() -> None:
    assert max_input_tokens(ModelParams()) == 512
