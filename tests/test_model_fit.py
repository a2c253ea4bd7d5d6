"""Params checked against the model's structure in the preflight (`check_params_fit_model`), not as
errors mid-run after the data step: `preprocess.max_length` past the model's positions (an index error,
and only once a text that long came along), a model that is no encoder (GPT-2), and a phase whose
groups hold no parameters in this model (the pooler under mean pooling)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiny_models import MAX_POSITION, MODEL_TYPES, tiny_backbone

from bitune.errors import ModelError, ParamsError
from bitune.model.classifier import max_input_tokens, meta_backbone
from bitune.params import ModelParams, load_params
from bitune.tuning.model_fit import check_params_fit_model

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
    limit = max_input_tokens(meta_backbone(ModelParams(name_or_path=str(tmp_path))))
    if limit is None:  # relative or rotary positions: longer than the config's 64 still runs
        assert model_type in ("deberta-v2", "modernbert")
        assert runs_at(backbone, 3 * MAX_POSITION)
    else:  # RoBERTa's positions start after its padding index: 63 of 64
        assert runs_at(backbone, limit) and not runs_at(backbone, limit + 1)


def test_a_max_length_past_the_limit_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    tiny_backbone("roberta", num_layers=6).save_pretrained(
        tmp_path
    )  # the default strategy trains layers[0:4]
    model = f"model.name_or_path={tmp_path}"
    check_params_fit_model(load_params(REPO / "params/default.yaml", [model, "preprocess.max_length=63"]))
    params = load_params(REPO / "params/default.yaml", [model, "preprocess.max_length=64"])
    with pytest.raises(
        ParamsError, match=r"^preprocess.max_length: 64 tokens, but .* has positions for 63; set "
    ):
        check_params_fit_model(params)


def test_the_bundled_model_takes_512_tokens() -> None:
    assert max_input_tokens(meta_backbone(ModelParams())) == 512


NOT_ENCODERS = {
    "gpt2": ({"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64}, "GPT2Model: a decoder"),
    # laid out as embeddings + blocks like an encoder: only the config tells (it trained, exit 0)
    "llama": (
        {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
        "LlamaModel: a decoder",
    ),
    "albert": (
        {"embedding_size": 16, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2},
        "AlbertModel: its config has 4 layers but 1 layer module",
    ),
    "bart": (
        {
            "d_model": 32,
            "encoder_layers": 1,
            "decoder_layers": 1,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
            "encoder_ffn_dim": 64,
            "decoder_ffn_dim": 64,
        },
        "BartModel: an encoder-decoder model",
    ),
}


@pytest.mark.parametrize("model_type", NOT_ENCODERS)
def test_a_model_that_is_no_encoder_is_named_with_its_type(tmp_path: Path, model_type: str) -> None:
    from transformers import AutoConfig, AutoModel

    settings, reason = NOT_ENCODERS[model_type]
    AutoModel.from_config(AutoConfig.for_model(model_type, vocab_size=120, **settings)).save_pretrained(
        tmp_path
    )
    params = load_params(REPO / "params/default.yaml", [f"model.name_or_path={tmp_path}"])
    with pytest.raises(
        ModelError, match=rf"^model.name_or_path: .* is a {model_type} model: {reason}.*BERT, RoBERTa"
    ):
        check_params_fit_model(params)


@pytest.mark.parametrize(("pooling", "fits"), [("mean", False), ("default", True)])
def test_a_phase_of_the_pooler_alone_needs_the_pooler_used(tmp_path: Path, pooling: str, fits: bool) -> None:
    tiny_backbone("bert", num_layers=6).save_pretrained(tmp_path)
    overrides = [
        f"model.name_or_path={tmp_path}",
        f"model.pooling={pooling}",
        "strategy.phases.0.train=[pooler]",
    ]
    params = load_params(REPO / "params/default.yaml", overrides)
    if fits:
        check_params_fit_model(params)
    else:
        with pytest.raises(
            ParamsError, match=r"^strategy phase 'head' .* selects no parameters in this model"
        ):
            check_params_fit_model(params)
