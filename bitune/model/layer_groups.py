"""Split a backbone into the groups a phase trains: embeddings, encoder layers, pooler, extras.

Resolved from the module tree, not from a table of class names, so any encoder laid out as
"embeddings + a ModuleList of identical blocks" works (BERT, RoBERTa, DistilBERT, DeBERTa-v2, ELECTRA,
ModernBERT, ...). Every backbone parameter lands in exactly one group: freezing by group can then
never leave a weight trainable by accident, and drift per group adds up to the whole model.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from bitune.errors import ModelError, ParamsError
from bitune.params import LAYER_SLICE, PhaseSpec, StrategyParams

SUPPORTED = "bitune supports encoder models like BERT, RoBERTa, DistilBERT, DeBERTa-v2, ELECTRA, ModernBERT"
HEAD_ADJACENT = ("pooler", "extras")


@dataclass
class LayerGroups:
    """The backbone's modules by group; `layers` runs bottom (next to the embeddings) to top."""

    embeddings: list[nn.Module]
    layers: list[nn.Module]
    pooler: nn.Module | None
    extras: list[nn.Module]

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _find_embeddings(backbone: nn.Module) -> list[nn.Module]:
    return [
        child for name, child in backbone.named_children() if name.startswith("embed") and _has_params(child)
    ]


def _find_layers(backbone: nn.Module, embeddings: list[nn.Module]) -> nn.ModuleList | None:
    """The ModuleList of same-class blocks holding the most parameters, outside the embeddings."""
    inside_embeddings = {id(m) for e in embeddings for m in e.modules()}
    best: nn.ModuleList | None = None
    best_size = 0
    for module in backbone.modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0 or id(module) in inside_embeddings:
            continue
        if len({type(block) for block in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            best, best_size = module, size
    return best


def _find_extras(module: nn.Module, claimed: set[int], path: str) -> list[nn.Module]:
    """Largest unclaimed subtrees that own parameters: what the named groups leave over."""
    if next(module.parameters(recurse=False), None) is not None:
        raise ModelError(
            f"{type(module).__name__} at {path or '(root)'} holds parameters next to the encoder layers; "
            f"bitune cannot group them. {SUPPORTED}"
        )
    extras: list[nn.Module] = []
    for name, child in module.named_children():
        if id(child) in claimed or not _has_params(child):
            continue
        child_path = f"{path}.{name}" if path else name
        if any(id(m) in claimed for m in child.modules()):
            extras.extend(_find_extras(child, claimed, child_path))
        else:
            extras.append(child)
    return extras


def _check_encoder_config(backbone: nn.Module) -> None:
    """Refuse by config what the layout alone would accept: a decoder lays out as embeddings + blocks too.

    A decoder's (Llama's) causal attention leaves token 0 seeing only itself, so `cls` pooling gives
    every text the same features; the run trained and registered a model that cannot separate
    anything, with exit 0. A model type that only Hugging Face's causal-LM mapping knows (no
    masked-LM head) is a decoder.
    """
    config = getattr(backbone, "config", None)
    if config is None:
        return
    model_name = type(backbone).__name__
    model_type = getattr(config, "model_type", "")
    if getattr(config, "is_encoder_decoder", False):
        raise ModelError(f"{model_name}: an encoder-decoder model; {SUPPORTED}")
    if getattr(config, "is_decoder", False) or (
        model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    ):
        raise ModelError(
            f"{model_name}: a decoder (causal attention: each token sees only those before it); {SUPPORTED}"
        )


def _check_layers_not_shared(backbone: nn.Module, layers: nn.ModuleList) -> None:
    """ALBERT runs one block's weights at every depth: its lower layers cannot train apart from the upper."""
    depth = getattr(getattr(backbone, "config", None), "num_hidden_layers", None)
    if isinstance(depth, int) and depth != len(layers):
        raise ModelError(
            f"{type(backbone).__name__}: its config has {depth} layers but {len(layers)} layer "
            f"module{'s' if len(layers) != 1 else ''} (weights shared across depth), so layers[i:j] cannot "
            f"pick its lower layers; {SUPPORTED}"
        )


def resolve_layer_groups(backbone: nn.Module) -> LayerGroups:
    """Find the groups of a Hugging Face encoder (the base model, e.g. `model.base_model`).

    Raises ModelError naming the class when the layout is not embeddings + a ModuleList of blocks,
    or when its config says decoder, encoder-decoder, or layers shared across depth.
    """
    _check_encoder_config(backbone)
    model_name = type(backbone).__name__
    embeddings = _find_embeddings(backbone)
    if not embeddings:
        raise ModelError(
            f"{model_name}: found no embeddings module (a child named embeddings*); {SUPPORTED}, "
            "passed as the base model without the task head"
        )
    layers = _find_layers(backbone, embeddings)
    if layers is None:
        raise ModelError(f"{model_name}: found no ModuleList of same-class encoder layers; {SUPPORTED}")
    _check_layers_not_shared(backbone, layers)
    pooler = getattr(backbone, "pooler", None)
    if not isinstance(pooler, nn.Module):
        pooler = None
    claimed = {id(m) for m in embeddings} | {id(layers)} | ({id(pooler)} if pooler is not None else set())
    extras = _find_extras(backbone, claimed, "")
    return LayerGroups(embeddings=embeddings, layers=list(layers), pooler=pooler, extras=extras)


def _as_module(modules: list[nn.Module]) -> nn.Module:
    """One module per group name, so names stay unique; parameters are shared, not copied."""
    return modules[0] if len(modules) == 1 else nn.ModuleList(modules)


def _layer_indices(name: str, num_layers: int, field: str = "train") -> list[int]:
    """Indices of `layers[i:j]`; an index past the model's layers is an error, never clipped.

    Python slicing would clip `layers[0:4]` on a 2-layer model to all of it: a bottom phase meant
    for the lower layers would quietly train every layer.
    """
    match = LAYER_SLICE.match(name)
    if match is None:
        raise ParamsError(
            f"{field}: unknown group {name!r}; use head, pooler, embeddings, extras or layers[i:j]"
        )
    start, stop = (int(g) if g else None for g in match.groups())
    n = num_layers
    if (start is not None and not -n <= start < n) or (stop is not None and not -n <= stop <= n):
        raise ParamsError(
            f"{field}: {name!r} reaches past this model's {n} layers (layers[0:{n}] is all of them); "
            f"use indices within 0..{n - 1}"
        )
    indices = list(range(n))[start:stop]
    if not indices:
        raise ParamsError(
            f"{field}: {name!r} selects none of this model's {n} layers; use i < j within 0..{n}"
        )
    return indices


def select_modules(
    groups: LayerGroups, names: list[str], field: str = "train"
) -> list[tuple[str, nn.Module]]:
    """Resolve a phase's `train` names to (qualified name, module) pairs, each name once.

    Qualified names are "embeddings", "pooler", "extras" and "layers.<i>" (i counted from the
    bottom, never negative). "head" is skipped: the classifier owns it. So are "pooler" and "extras"
    when the model has none. A group of several modules (ELECTRA's embeddings + embeddings_project)
    comes back as one nn.ModuleList sharing their parameters. `field` names the params key in errors.
    """
    selected: dict[str, nn.Module] = {}
    for name in names:
        if name == "head":
            continue
        if name == "embeddings":
            selected["embeddings"] = _as_module(groups.embeddings)
        elif name == "pooler":
            if groups.pooler is not None:
                selected["pooler"] = groups.pooler
        elif name == "extras":
            if groups.extras:
                selected["extras"] = _as_module(groups.extras)
        else:
            for i in _layer_indices(name, groups.num_layers, field):
                selected[f"layers.{i}"] = groups.layers[i]
    return list(selected.items())


def layer_depth(name: str, num_layers: int) -> int:
    """Distance from the top, for layer-wise lr decay (lr × decay^depth): the head side is 0."""
    if name in ("head", "pooler", "extras"):
        return 0
    if name == "embeddings":
        return num_layers + 1
    prefix, _, index = name.partition(".")
    if prefix == "layers" and index.isdigit() and int(index) < num_layers:
        return num_layers - int(index)
    raise ValueError(f"layer_depth: unknown qualified name {name!r} for a {num_layers}-layer model")


def gradual_unfreeze_order(groups: LayerGroups, names: list[str]) -> list[list[str]]:
    """ULMFiT stages, top down: head-adjacent groups, then one layer per stage, embeddings last.

    An empty first stage merges into the next; with nothing selected the answer is [[]], so there
    is always a stage 0 for the caller to prepend "head" to.
    """
    selected = [name for name, _ in select_modules(groups, names)]
    first = [name for name in HEAD_ADJACENT if name in selected]
    layers = sorted((n for n in selected if n.startswith("layers.")), key=lambda n: -int(n.split(".")[1]))
    stages = [first] if first else []
    stages += [[name] for name in layers]
    if "embeddings" in selected:
        stages.append(["embeddings"])
    return stages or [[]]


def strategy_phases(strategy: StrategyParams) -> list[tuple[str, PhaseSpec]]:
    """Each phase spec with its params key: ('strategy.prelude.0', spec), ('strategy.phases.0', spec), ..."""
    return [(f"strategy.prelude.{i}", spec) for i, spec in enumerate(strategy.prelude)] + [
        (f"strategy.phases.{i}", spec) for i, spec in enumerate(strategy.phases)
    ]


def check_layer_slices(strategy: StrategyParams, num_layers: int) -> None:
    """Every `layers[i:j]` of every phase within the model's layers, checked before any phase trains.

    Raises ParamsError naming `strategy.phases.N.train`, the model's layer count and the fix.
    """
    for field, spec in strategy_phases(strategy):
        for name in spec.train:
            if LAYER_SLICE.match(name):
                _layer_indices(name, num_layers, f"{field}.train")


def unfreeze_stages(groups: LayerGroups, names: list[str], uses_pooler: bool) -> list[list[str]]:
    """Groups that train in each epoch of a gradual phase, as the phase builds them: the head alone,
    then one more group a stage (`gradual_unfreeze_order`); the pooler only counts when it is used."""
    order = gradual_unfreeze_order(groups, [n for n in names if n != "head"])
    active = ["head"] if "head" in names else []
    stages = [list(active)] if active else []
    for step in order:
        added = [n for n in step if (n != "pooler" or uses_pooler) and n not in active]
        if added:
            active = active + added
            stages.append(list(active))
    return stages or [active]


def gradual_shortfall(spec: PhaseSpec, groups: LayerGroups, uses_pooler: bool, field: str) -> str | None:
    """A warning when a gradual phase has fewer epochs than stages: its last groups would never train."""
    if spec.unfreeze != "gradual":
        return None
    stages = unfreeze_stages(groups, spec.train, uses_pooler)
    if spec.epochs is None and spec.max_steps:
        return None  # its epochs follow from the data's size; the phase's progress log shows them
    epochs = spec.epochs or 1
    if epochs >= len(stages):
        return None
    never = [n for n in stages[-1] if n not in stages[epochs - 1]]
    return (
        f"{field}: gradual unfreezing has {len(stages)} stages on this {groups.num_layers}-layer model "
        f"but epochs is {epochs}, so {', '.join(never)} never train; set {field}.epochs to at "
        f"least {len(stages)}"
    )
