"""Typed params: `params/*.yaml` validated once, at the edge, into frozen models.

`params/default.yaml` is the single source of truth. It names a strategy preset
(`params/strategies/<name>.yaml`) that is composed in before validation, and `--set key=value`
overrides apply on top. `models` declares every key, `loading` composes and validates, `explain`
words a validation error as one line naming its source, and `redaction` keeps secrets out of logs.
"""

from bitune.params.loading import compose, load_params, parse_override, strategies_dir, validate
from bitune.params.models import (
    GATE_METRICS,
    GROUP_NAMES,
    LAYER_SLICE,
    LOWER_IS_BETTER,
    MODEL_IRRELEVANT,
    PER_CLASS_F1,
    DataParams,
    EarlyStopping,
    ForgettingParams,
    ModelParams,
    Params,
    PhaseSpec,
    PreprocessParams,
    RegistryParams,
    SplitParams,
    StrategyParams,
    TrackingParams,
    TrainParams,
)
from bitune.params.redaction import flatten, redact

__all__ = [
    "GATE_METRICS",
    "GROUP_NAMES",
    "LAYER_SLICE",
    "LOWER_IS_BETTER",
    "MODEL_IRRELEVANT",
    "PER_CLASS_F1",
    "DataParams",
    "EarlyStopping",
    "ForgettingParams",
    "ModelParams",
    "Params",
    "PhaseSpec",
    "PreprocessParams",
    "RegistryParams",
    "SplitParams",
    "StrategyParams",
    "TrackingParams",
    "TrainParams",
    "compose",
    "flatten",
    "load_params",
    "parse_override",
    "redact",
    "strategies_dir",
    "validate",
]
