"""`train.bf16_norms`: under bf16 autocast the residual stream between layers is bf16, nothing else moves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import MODEL_TYPES, tiny_backbone
from torch import nn

from bitune.params import TrainParams, load_params
from bitune.tuning.bf16_norms import Bf16LayerNorm, use_bf16_norms

PARAMS = Path(__file__).resolve().parents[1] / "params" / "default.yaml"


def bf16_autocast() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def norm(width: int = 32) -> nn.LayerNorm:
    torch.manual_seed(0)
    layer = nn.LayerNorm(width)
    nn.init.normal_(layer.weight)
    nn.init.normal_(layer.bias)
    return layer


def test_under_bf16_autocast_the_norm_reads_and_writes_bf16_close_to_fp32() -> None:
    x = torch.randn(4, 8, 32)
    plain = norm()
    with bf16_autocast():
        expected = plain(x)  # autocast's own: fp32 out
    use_bf16_norms(plain)
    with bf16_autocast():
        got = plain(x)
    assert expected.dtype == torch.float32 and got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), expected, atol=0.05, rtol=0.02)  # bf16 rounding, no more


def test_without_autocast_it_is_exactly_a_layer_norm() -> None:
    x = torch.randn(4, 8, 32)
    plain, swapped = norm(), norm()
    use_bf16_norms(swapped)
    assert torch.equal(plain(x), swapped(x))
    with torch.autocast("cpu", dtype=torch.float16):  # another autocast dtype: autocast's rules apply
        assert swapped(x).dtype == plain(x).dtype


def test_gradients_reach_the_fp32_weights_in_fp32() -> None:
    layer = norm()
    use_bf16_norms(layer)
    with bf16_autocast():
        out = layer(torch.randn(4, 32, requires_grad=True))
    out.float().square().sum().backward()
    assert layer.weight.dtype == torch.float32 and layer.weight.grad is not None
    assert layer.weight.grad.dtype == torch.float32 and layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_architecture_keeps_a_bf16_residual_stream(model_type: str) -> None:
    """What the setting is for: the hidden state each layer hands the next is bf16. (BERT's is fp32
    under autocast alone; some architectures' code casts it down already.)"""
    torch.manual_seed(0)
    backbone = tiny_backbone(model_type, num_layers=2).eval()
    ids = torch.randint(5, 90, (2, 12))
    mask = torch.ones_like(ids)

    def hidden_dtypes() -> set[torch.dtype]:
        with bf16_autocast():
            out = backbone(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        return {h.dtype for h in out.hidden_states[1:]}

    names = list(backbone.state_dict())
    before = hidden_dtypes()
    changed = use_bf16_norms(backbone)
    assert changed > 0 and use_bf16_norms(backbone) == 0  # idempotent
    assert all(type(m) is not nn.LayerNorm for m in backbone.modules())
    assert list(backbone.state_dict()) == names  # checkpoints load either way
    assert hidden_dtypes() == {torch.bfloat16}
    if model_type == "bert":
        assert before == {torch.float32}


def test_subclasses_of_layer_norm_keep_their_own_forward() -> None:
    class Custom(nn.LayerNorm):
        pass

    model = nn.Sequential(Custom(8), nn.LayerNorm(8))
    assert use_bf16_norms(model) == 1
    assert type(model[0]) is Custom and type(model[1]) is Bf16LayerNorm


BF16_PHASE = """
import sys
from test_tuning_engine import DATA, context, model_for, phase
from bitune.tuning.bf16_norms import Bf16LayerNorm
from bitune.tuning.phase import run_phase
from bitune.tuning.schedule import PhaseRun

model = model_for()
ctx = context(model, bf16_norms=sys.argv[1] == "on")
result = run_phase(model, PhaseRun(0, 1, phase(epochs=2)), DATA, ctx)
swapped = sum(isinstance(m, Bf16LayerNorm) for m in model.modules())
print(ctx.accelerator.mixed_precision, swapped, result.kept["val_accuracy"])
"""


@pytest.mark.parametrize(
    ("precision", "setting", "swapped"), [("bf16", "on", True), ("bf16", "off", False), ("fp32", "on", False)]
)
def test_a_phase_uses_bf16_norms_only_when_asked_and_training_in_bf16(
    precision: str, setting: str, swapped: bool
) -> None:
    """accelerate's precision is a process-wide singleton, so each case runs in its own interpreter."""
    env = os.environ | {"BITUNE_TEST_PRECISION": precision, "PYTHONPATH": str(Path(__file__).parent)}
    done = subprocess.run(
        [sys.executable, "-c", BF16_PHASE, setting], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    mixed, count, accuracy = done.stdout.split()[-3:]
    assert mixed == ("bf16" if precision == "bf16" else "no")
    assert (int(count) > 0) is swapped
    assert 0.0 <= float(accuracy) <= 1.0


def test_the_pipeline_key_moves_only_when_the_setting_leaves_its_default() -> None:
    """Projects that never name it keep their keys (tests/test_pipeline_key.py pins them)."""
    default = TrainParams.model_fields["bf16_norms"].default
    base = load_params(PARAMS).digest()
    assert load_params(PARAMS, [f"train.bf16_norms={str(default).lower()}"]).digest() == base
    assert load_params(PARAMS, [f"train.bf16_norms={str(not default).lower()}"]).digest() != base


def test_the_feature_cache_keys_bf16_features_by_the_setting() -> None:
    """Features encoded with bf16 norms differ by bf16 rounding: a cache made without them is not theirs."""
    from bitune.tuning.features import features_precision

    assert features_precision("bf16", True) != features_precision("bf16", False)
    assert features_precision("no", True) == features_precision("no", False) == "no"
