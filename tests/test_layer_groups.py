"""Layer groups on the real module trees of every supported architecture (tiny random weights)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from tiny_models import MODEL_TYPES, tiny_backbone
from torch import nn

from bitune.device import make_accelerator
from bitune.errors import ModelError, ParamsError
from bitune.model.classifier import BituneClassifier
from bitune.model.layer_groups import (
    LayerGroups,
    check_layer_slices,
    gradual_shortfall,
    gradual_unfreeze_order,
    layer_depth,
    resolve_layer_groups,
    select_modules,
    unfreeze_stages,
)
from bitune.params import PhaseSpec, TrainParams, load_params
from bitune.tuning.phase import PhaseContext, _stages
from bitune.tuning.schedule import PhaseRun

PARAMS = Path(__file__).resolve().parents[1] / "params" / "default.yaml"

NUM_LAYERS = 3


@pytest.fixture(scope="module", params=MODEL_TYPES)
def resolved(request: pytest.FixtureRequest) -> tuple[str, nn.Module, LayerGroups]:
    backbone = tiny_backbone(request.param, num_layers=NUM_LAYERS)
    return request.param, backbone, resolve_layer_groups(backbone)


def _param_ids(modules: list[nn.Module]) -> list[int]:
    return [id(p) for m in modules for p in m.parameters()]


def test_every_parameter_in_exactly_one_group(resolved: tuple[str, nn.Module, LayerGroups]) -> None:
    _, backbone, groups = resolved
    pooler = [groups.pooler] if groups.pooler is not None else []
    owned = _param_ids(groups.embeddings) + _param_ids(groups.layers) + _param_ids(pooler)
    owned += _param_ids(groups.extras)
    assert len(owned) == len(set(owned)), "a parameter sits in two groups"
    assert set(owned) == {id(p) for p in backbone.parameters()}


def test_layers_are_the_encoder_blocks(resolved: tuple[str, nn.Module, LayerGroups]) -> None:
    model_type, _, groups = resolved
    assert groups.num_layers == NUM_LAYERS
    assert len({type(layer) for layer in groups.layers}) == 1
    assert "Embedding" in type(groups.embeddings[0]).__name__
    assert all(sum(p.numel() for p in e.parameters()) > 0 for e in groups.embeddings)


def test_architecture_specific_groups(resolved: tuple[str, nn.Module, LayerGroups]) -> None:
    model_type, backbone, groups = resolved
    has_pooler = model_type in ("bert", "roberta")
    assert (groups.pooler is backbone.pooler) if has_pooler else groups.pooler is None
    if model_type == "electra":
        assert groups.embeddings == [backbone.embeddings, backbone.embeddings_project]
    if model_type == "deberta-v2":
        extras = {id(m) for m in groups.extras}
        assert extras == {id(backbone.encoder.rel_embeddings), id(backbone.encoder.LayerNorm)}
    elif model_type == "modernbert":
        assert groups.extras == [backbone.final_norm]
    else:
        assert groups.extras == []


def test_layers_run_bottom_to_top(resolved: tuple[str, nn.Module, LayerGroups]) -> None:
    """The list order must be the forward order: layer-wise lr decay and unfreezing rely on it."""
    _, backbone, groups = resolved
    order: list[int] = []
    handles = [
        layer.register_forward_pre_hook(lambda _m, _a, i=i: order.append(i))
        for i, layer in enumerate(groups.layers)
    ]
    try:
        with torch.no_grad():
            backbone.eval()(input_ids=torch.tensor([[2, 10, 11, 12, 13, 3]]))
    finally:
        for handle in handles:
            handle.remove()
    assert order == list(range(NUM_LAYERS))


def test_select_modules_resolves_names(resolved: tuple[str, nn.Module, LayerGroups]) -> None:
    _, _, groups = resolved
    picked = select_modules(groups, ["head", "embeddings", "layers[0:2]"])
    assert [name for name, _ in picked] == ["embeddings", "layers.0", "layers.1"]
    assert picked[1][1] is groups.layers[0] and picked[2][1] is groups.layers[1]
    embedding_params = {id(p) for p in picked[0][1].parameters()}
    assert embedding_params == set(_param_ids(groups.embeddings))

    assert [n for n, _ in select_modules(groups, ["layers[-1:]"])] == [f"layers.{NUM_LAYERS - 1}"]
    assert [n for n, _ in select_modules(groups, ["layers[0:]"])] == [
        f"layers.{i}" for i in range(NUM_LAYERS)
    ]
    assert [n for n, _ in select_modules(groups, ["layers[:]"])] == [f"layers.{i}" for i in range(NUM_LAYERS)]
    overlap = select_modules(groups, ["layers[0:2]", "layers[1:3]"])
    assert [n for n, _ in overlap] == ["layers.0", "layers.1", "layers.2"]


def test_select_modules_skips_missing_optional_groups(resolved: tuple[str, nn.Module, LayerGroups]) -> None:
    model_type, _, groups = resolved
    names = [n for n, _ in select_modules(groups, ["pooler", "extras"])]
    expected = (["pooler"] if groups.pooler is not None else []) + (["extras"] if groups.extras else [])
    assert names == expected
    if model_type == "deberta-v2":
        ((_, extras),) = select_modules(groups, ["extras"])
        assert {id(p) for p in extras.parameters()} == set(_param_ids(groups.extras))


def test_select_modules_rejects_bad_names() -> None:
    groups = resolve_layer_groups(tiny_backbone("bert", num_layers=2))
    with pytest.raises(ParamsError, match="'encoder'"):
        select_modules(groups, ["encoder"])
    with pytest.raises(ParamsError, match=r"'layers\[1:1\]' selects none of this model's 2 layers"):
        select_modules(groups, ["layers[1:1]"])


@pytest.mark.parametrize("name", ["layers[0:4]", "layers[4:6]", "layers[2:]", "layers[-3:]", "layers[:3]"])
def test_slices_past_the_last_layer_are_errors_not_clipped(name: str) -> None:
    """Python slicing would make layers[0:4] on 2 layers mean all of them: a silent full fine-tune."""
    groups = resolve_layer_groups(tiny_backbone("bert", num_layers=2))
    message = rf"^strategy.phases.1.train: '{re.escape(name)}' reaches past this model's 2 layers .*0\.\.1$"
    with pytest.raises(ParamsError, match=message):
        select_modules(groups, [name], "strategy.phases.1.train")


@pytest.mark.parametrize(
    ("name", "expected"),
    [("layers[0:2]", [0, 1]), ("layers[-2:]", [0, 1]), ("layers[1:]", [1]), ("layers[0:-1]", [0])],
)
def test_slices_up_to_the_layer_count_are_fine(name: str, expected: list[int]) -> None:
    groups = resolve_layer_groups(tiny_backbone("bert", num_layers=2))
    assert [n for n, _ in select_modules(groups, [name])] == [f"layers.{i}" for i in expected]


def test_check_layer_slices_names_the_phase_field() -> None:
    strategy = load_params(PARAMS).strategy  # bidirectional: the bottom phase trains layers[0:4]
    assert strategy.phases[1].train[1] == "layers[0:4]"
    check_layer_slices(strategy, 4)  # the tiny test models have 4 layers: the preset fits them
    check_layer_slices(strategy, 6)  # all-MiniLM-L6-v2
    with pytest.raises(ParamsError, match=r"^strategy.phases.1.train: 'layers\[0:4\]' .* 3 layers"):
        check_layer_slices(strategy, 3)
    lp_ft = load_params(PARAMS, ["strategy=lp_ft", "strategy.prelude.0.train=[head, 'layers[5:]']"])
    with pytest.raises(ParamsError, match=r"^strategy.prelude.0.train: 'layers\[5:\]'"):
        check_layer_slices(lp_ft.strategy, 4)


def test_layer_depth_counts_from_the_top() -> None:
    assert layer_depth("pooler", 6) == 0
    assert layer_depth("extras", 6) == 0
    assert layer_depth("head", 6) == 0
    assert layer_depth("layers.5", 6) == 1
    assert layer_depth("layers.0", 6) == 6
    assert layer_depth("embeddings", 6) == 7
    with pytest.raises(ValueError, match="layers.6"):
        layer_depth("layers.6", 6)


def test_gradual_unfreeze_order_is_top_down(resolved: tuple[str, nn.Module, LayerGroups]) -> None:
    _, _, groups = resolved
    everything = ["head", "pooler", "extras", "embeddings", "layers[0:]"]
    stages = gradual_unfreeze_order(groups, everything)
    first = [n for n in ("pooler", "extras") if n in dict(select_modules(groups, everything))]
    layer_stages = [[f"layers.{i}"] for i in reversed(range(NUM_LAYERS))]
    assert stages == ([first] if first else []) + layer_stages + [["embeddings"]]


def test_gradual_unfreeze_order_partial_selections() -> None:
    groups = resolve_layer_groups(tiny_backbone("distilbert", num_layers=4))
    assert gradual_unfreeze_order(groups, ["head", "embeddings", "layers[0:2]"]) == [
        ["layers.1"],
        ["layers.0"],
        ["embeddings"],
    ]
    assert gradual_unfreeze_order(groups, ["head"]) == [[]]
    bert = resolve_layer_groups(tiny_backbone("bert", num_layers=2))
    assert gradual_unfreeze_order(bert, ["pooler", "layers[-1:]"]) == [["pooler"], ["layers.1"]]


@pytest.mark.parametrize("pooling", ["mean", "default"])
def test_unfreeze_stages_are_the_phase_stages(pooling: str) -> None:
    """The count the warning uses is the stages run_phase trains, pooler skipped when unused."""
    model = BituneClassifier(tiny_backbone("bert", num_layers=3), 2, pooling, 0.0)
    groups = resolve_layer_groups(model.backbone)
    spec = PhaseSpec(
        name="g", train=["head", "pooler", "layers[0:]", "embeddings"], unfreeze="gradual", lr=1e-3
    )
    ctx = PhaseContext(make_accelerator(TrainParams(device="cpu")), groups, {})
    expected = [[name for name, _ in stage] for stage in _stages(PhaseRun(0, 1, spec), model, ctx)]
    assert unfreeze_stages(groups, spec.train, model.uses_pooler) == expected
    assert len(expected) == (6 if pooling == "default" else 5)


def test_gradual_shortfall_warns_when_epochs_are_fewer_than_stages() -> None:
    groups = resolve_layer_groups(tiny_backbone("bert", num_layers=3))
    train = ["head", "layers[0:]", "embeddings"]  # stages: head, +layers.2, +layers.1, +layers.0, +embeddings
    spec = PhaseSpec(name="g", train=train, unfreeze="gradual", epochs=3, lr=1e-3)
    message = gradual_shortfall(spec, groups, False, "strategy.phases.0")
    assert message == (
        "strategy.phases.0: gradual unfreezing has 5 stages on this 3-layer model but epochs is 3, "
        "so layers.0, embeddings never train; set strategy.phases.0.epochs to at least 5"
    )
    assert gradual_shortfall(spec.model_copy(update={"epochs": 5}), groups, False, "f") is None
    assert gradual_shortfall(spec.model_copy(update={"unfreeze": "all"}), groups, False, "f") is None


def test_gradual_unfreeze_preset_trains_the_extras() -> None:
    """ModernBERT's final_norm and DeBERTa's rel_embeddings unfreeze with the head-adjacent stage."""
    (spec,) = load_params(PARAMS, ["strategy=gradual_unfreeze"]).strategy.phases
    for model_type in ("modernbert", "deberta-v2"):
        groups = resolve_layer_groups(tiny_backbone(model_type, num_layers=2))
        assert groups.extras
        stages = unfreeze_stages(groups, spec.train, uses_pooler=False)
        assert stages[1] == ["head", "extras"]
        assert stages[-1] == ["head", "extras", "layers.1", "layers.0", "embeddings"]


class _DecoderLike(nn.Module):
    """GPT-2-shaped: token and position tables named wte/wpe, blocks in `h`."""

    def __init__(self) -> None:
        super().__init__()
        self.wte = nn.Embedding(10, 4)
        self.wpe = nn.Embedding(8, 4)
        self.h = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])


class _NoBlocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(10, 4)
        self.mixer = nn.Linear(4, 4)


class _LooseParameter(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(10, 4)
        self.layers = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])
        self.scale = nn.Parameter(torch.ones(4))


def test_unknown_structure_is_a_model_error_naming_the_class() -> None:
    with pytest.raises(ModelError, match=r"^_DecoderLike: found no embeddings module.*BERT, RoBERTa"):
        resolve_layer_groups(_DecoderLike())
    with pytest.raises(ModelError, match=r"^_NoBlocks: found no ModuleList"):
        resolve_layer_groups(_NoBlocks())
    with pytest.raises(ModelError, match=r"_LooseParameter at \(root\) holds parameters"):
        resolve_layer_groups(_LooseParameter())


def test_largest_block_list_wins_and_leftovers_are_extras() -> None:
    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = nn.Embedding(10, 4)
            self.adapters = nn.ModuleList([nn.Linear(4, 1) for _ in range(3)])
            self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])
            self.mixed = nn.ModuleList([nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 4), nn.Linear(4, 4)])

    encoder = Encoder()
    groups = resolve_layer_groups(encoder)
    assert groups.layers == list(encoder.blocks)
    assert groups.extras == [encoder.adapters, encoder.mixed]
