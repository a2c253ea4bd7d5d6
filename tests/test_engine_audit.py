"""Engine guarantees probed on every architecture and precision: frozen groups do no work and make no
noise, early stopping hands on the best epoch bit for bit, `max_steps` bounds a phase and its schedule,
the NaN guard fires under bf16 autocast, and pooling "default" is the model's own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_tuning_engine import DATA, context, model_for, names_in, phase, snapshot
from tiny_models import MODEL_TYPES, tiny_backbone, tiny_config
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from transformers import AutoModel

from bitune.model.classifier import BituneClassifier
from bitune.params import EarlyStopping
from bitune.tuning.batching import pad_batch
from bitune.tuning.phase import run_phase
from bitune.tuning.schedule import PhaseRun


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_frozen_groups_get_no_gradients_and_run_in_eval_mode(model_type: str) -> None:
    """`layers[0:2]` of four: only layers 0-1 and the head get weight gradients, and every module
    outside them (upper layers, embeddings, final norms, relative embeddings) runs in eval mode, so
    no dropout noise reaches layers that cannot learn from it."""
    model = model_for(model_type, layers=4)
    ctx = context(model)
    trained_modules = [ctx.groups.layers[0], ctx.groups.layers[1], model.head]
    trained = names_in(model, trained_modules)
    inside = {id(m) for part in trained_modules for m in part.modules()}
    graded: set[str] = set()
    for name, param in model.named_parameters():
        param.register_post_accumulate_grad_hook(lambda _, name=name: graded.add(name))
    modes: dict[str, set[bool]] = {}
    for name, module in model.named_modules():

        def record(module: nn.Module, args: object, name: str = name) -> None:
            if torch.is_grad_enabled():  # training steps, not the validation pass
                modes.setdefault(name, set()).add(module.training)

        module.register_forward_pre_hook(record)
    spec = phase(train=["layers[0:2]", "head"], epochs=1)
    run_phase(model, PhaseRun(0, 1, spec), DATA, ctx)
    assert graded == trained, sorted(graded ^ trained)
    by_id = dict(model.named_modules())
    noisy = sorted(n for n, seen in modes.items() if True in seen and id(by_id[n]) not in inside)
    assert not noisy, noisy
    quiet = sorted(n for n, seen in modes.items() if False in seen and id(by_id[n]) in inside)
    assert not quiet, quiet
    assert any(name.startswith("head") for name in modes), "the hooks saw no training forward pass"


@pytest.mark.parametrize(
    ("train", "lr"),
    [(["embeddings", "layers[0:2]", "head"], 3e-2), (["head"], 1.0)],
    ids=["tokens", "features"],
)
def test_early_stopping_hands_on_the_best_epochs_weights_bit_for_bit(train: list[str], lr: float) -> None:
    model = model_for()
    ctx = context(model)
    at_epoch: dict[int, dict[str, torch.Tensor]] = {}
    ctx.on_epoch = lambda metrics, epoch: at_epoch.__setitem__(epoch, snapshot(model))
    spec = phase(train=train, lr=lr, epochs=8, early_stopping=EarlyStopping(metric="loss", patience=2))
    result = run_phase(model, PhaseRun(0, 1, spec), DATA, ctx)
    assert result.used_feature_cache == (train == ["head"])
    assert result.kept_epoch == result.best_epoch < len(result.history), "no later, worse epoch to undo"
    best = at_epoch[result.best_epoch]
    for name, param in model.named_parameters():
        assert torch.equal(param, best[name]), name


@pytest.mark.parametrize(
    "train", [["embeddings", "layers[0:1]", "head"], ["head"]], ids=["tokens", "features"]
)
@pytest.mark.parametrize("max_steps", [5, 1000])
def test_max_steps_bounds_the_phase_and_its_schedule_ends_with_it(train: list[str], max_steps: int) -> None:
    """96 rows in batches of 8 for 2 epochs: 24 steps, or 5 with max_steps=5. The linear schedule
    spans the steps actually taken, so its last step runs at lr/steps, not near the full lr."""
    model = model_for()
    rates: list[float] = []
    handle = register_optimizer_step_pre_hook(lambda opt, a, k: rates.append(opt.param_groups[0]["lr"]))
    try:
        spec = phase(train=train, epochs=2, lr=1e-3, max_steps=max_steps)
        result = run_phase(model, PhaseRun(0, 1, spec), DATA, context(model))
    finally:
        handle.remove()
    steps = min(max_steps, 24)
    assert len(rates) == steps
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-3 / steps)
    assert result.train_samples == min(96 * 2, 8 * steps)


NAN_UNDER_BF16 = """
import sys
import torch
from test_tuning_engine import DATA, context, model_for, phase
from bitune.errors import TrainingError
from bitune.tuning.phase import run_phase
from bitune.tuning.schedule import PhaseRun

model = model_for()
ctx = context(model)
assert ctx.accelerator.mixed_precision == "bf16"
calls = [0]

def poison(grad):  # one inf gradient at the third step, inside the bf16 autocast region
    calls[0] += 1
    return grad * float("inf") if calls[0] == 3 else grad

ctx.groups.layers[0].output.dense.weight.register_hook(poison)
try:
    run_phase(model, PhaseRun(0, 1, phase(epochs=2)), DATA, ctx)
except TrainingError as exc:
    print(exc)
    sys.exit(0)
sys.exit(1)
"""


def test_nan_guard_stops_a_bf16_autocast_phase_on_cpu() -> None:
    """accelerate's precision is a process-wide singleton, so bf16 runs in its own interpreter."""
    env = os.environ | {"BITUNE_TEST_PRECISION": "bf16", "PYTHONPATH": str(Path(__file__).parent)}
    done = subprocess.run(
        [sys.executable, "-c", NAN_UNDER_BF16], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    message = done.stdout.strip().splitlines()[-1]
    assert message.startswith("bottom: loss became nan at epoch 1, by step 10;")
    assert message.endswith("or use train.precision=fp32")  # bf16 was on: fp32 is worth a try


def test_default_pooling_is_the_models_own() -> None:
    """BERT's own pooler on [CLS]; ModernBERT has none and pools as its config's
    `classifier_pooling` says (mean for ModernBERT-base)."""
    batch = pad_batch(DATA.train[:6], 0)
    ids, mask = batch["input_ids"], batch["attention_mask"]

    def features(backbone: nn.Module, pooling: str) -> torch.Tensor:
        model = BituneClassifier(backbone, 2, pooling, 0.0).eval()
        with torch.no_grad():
            return model.encode(ids, mask)

    for classifier_pooling in ("mean", "cls"):
        config = tiny_config("modernbert", classifier_pooling=classifier_pooling)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            backbone = AutoModel.from_config(config)
        default = features(backbone, "default")
        assert torch.equal(default, features(backbone, classifier_pooling)), classifier_pooling
        other = "cls" if classifier_pooling == "mean" else "mean"
        assert not torch.allclose(default, features(backbone, other)), classifier_pooling
    bert = BituneClassifier(tiny_backbone("bert"), 2, "default", 0.0)
    assert bert.uses_pooler and not bert.pools_mean
