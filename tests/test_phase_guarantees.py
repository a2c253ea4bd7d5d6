"""What a phase promises beyond "it trains": exact accumulated gradients, every row once, honest
results, resumes that neither retrain nor mix phases, no NaN weights saved, full RNG restore."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from test_tuning_engine import DATA, context, phase, rows
from tiny_models import tiny_config
from torch.optim.optimizer import register_optimizer_step_pre_hook
from transformers import AutoModel

from bitune.errors import ParamsError, TrainingError
from bitune.evaluation.metrics import summary_metrics
from bitune.model.classifier import BituneClassifier
from bitune.params import EarlyStopping
from bitune.tuning.batching import batch_count, length_grouped_batches, shard_batches
from bitune.tuning.checkpoint import PhaseCheckpoints, rng_state, set_rng_state
from bitune.tuning.phase import PhaseData, predict_logits, run_phase
from bitune.tuning.schedule import PhaseRun


def still_model(layers: int = 2) -> BituneClassifier:
    """A tiny BERT without dropout: its gradients depend on the rows only, not on random masks."""
    config = tiny_config("bert", layers, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return BituneClassifier(AutoModel.from_config(config), 2, "mean", 0.0)


@contextmanager
def gradients_at_each_step(model: torch.nn.Module) -> Iterator[list[dict[str, torch.Tensor]]]:
    """The gradients every optimizer step of the phase applies (torch's own global step hook)."""
    steps: list[dict[str, torch.Tensor]] = []
    names = {id(p): n for n, p in model.named_parameters()}

    def record(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        steps.append(
            {
                names[id(p)]: p.grad.clone()
                for g in optimizer.param_groups
                for p in g["params"]
                if p.grad is not None
            }
        )

    handle = register_optimizer_step_pre_hook(record)
    try:
        yield steps
    finally:
        handle.remove()


def test_accumulated_short_window_steps_with_the_gradient_of_one_batch() -> None:
    """20 rows as micro-batches of 8, 8 and 4 in a window of up to 4: the one step is the mean
    gradient over the 20 rows (not 3/4 of it), and the anchor's gradient joins at full weight."""
    data = PhaseData(rows(20), rows(8, seed=1), 0)
    kw = {"epochs": 1, "anchor": 0.5, "train": ["embeddings", "layers[0:1]", "head"]}
    grads = []
    for spec in (phase(batch_size=8, grad_accum=4, **kw), phase(batch_size=32, **kw)):
        model = still_model()
        ctx = context(model)
        ctx.pretrained = {n: p + 0.01 for n, p in ctx.pretrained.items()}  # a non-zero anchor gradient
        with gradients_at_each_step(model) as steps:
            run_phase(model, PhaseRun(0, 1, spec), data, ctx)
        assert len(steps) == 1
        grads.append(steps[0])
    accumulated, whole = grads
    assert accumulated.keys() == whole.keys() and any(k.startswith("backbone.embeddings") for k in whole)
    for name, g in whole.items():
        torch.testing.assert_close(accumulated[name], g, rtol=1e-4, atol=1e-7, msg=name)


def test_sharded_batches_cover_every_row_once_and_weigh_the_window_mean() -> None:
    lengths = [random.Random(i).randint(3, 40) for i in range(45)]
    batches = length_grouped_batches(lengths, 8, seed=0, min_rows=2)
    assert len(batches) == batch_count(45, 8, 2) == 6
    assert any(len(b) < 8 for b in batches[:-1]), "the short batch should sit mid-list for this seed"
    for processes in (1, 2, 3):
        plans = [shard_batches(batches, 4, processes, rank) for rank in range(processes)]
        assert len({len(p) for p in plans}) == 1  # every process steps in lockstep
        assert sorted(i for p in plans for m in p for i in m.rows) == list(range(45))
        assert all(m.rows for p in plans for m in p)
        # Σ weight·rows-mean over processes / processes = the window mean: weights sum to processes
        for window in (slice(0, 4), slice(4, 6)):
            total = sum(m.weight for p in plans for m in p[window])
            assert total == pytest.approx(processes)
    # a remainder smaller than the process count joins another batch: no process gets no rows
    merged = length_grouped_batches([5] * 17, 8, seed=0, min_rows=2)
    assert sorted(len(b) for b in merged) == [8, 9] and batch_count(17, 8, 2) == 2


def test_the_result_reports_the_handed_on_weights_apart_from_the_best_epoch() -> None:
    """No patience (every preset): the last epoch's weights are handed on; `kept` says so."""
    model = still_model()
    spec = phase(epochs=6, lr=3e-2)
    result = run_phase(model, PhaseRun(0, 1, spec), DATA, context(model))
    assert result.best_epoch != len(result.history), "this run should peak before its last epoch"
    assert result.kept_epoch == len(result.history) and result.kept == result.history[-1]
    labels = torch.tensor([r["labels"] for r in DATA.validation])
    now = summary_metrics(predict_logits(model, DATA.validation, context(model), 0), labels)
    assert now["accuracy"] == result.kept["val_accuracy"]
    assert now["loss"] == pytest.approx(result.kept["val_loss"], rel=1e-5)
    assert now["loss"] != pytest.approx(result.best["val_loss"], rel=1e-5)

    restored = still_model()
    with_patience = phase(epochs=6, lr=3e-2, early_stopping=EarlyStopping(patience=10))
    result = run_phase(restored, PhaseRun(0, 1, with_patience), DATA, context(restored))
    assert result.kept_epoch == result.best_epoch and result.kept == result.best


@pytest.mark.parametrize("cache_features", [True, False])
def test_a_phase_with_nothing_to_train_names_the_phase_and_the_fix(cache_features: bool) -> None:
    model = still_model()  # mean pooling: the pooler is not used, so it holds nothing to train
    spec = phase(name="top", train=["pooler"], cache_features=cache_features)
    with pytest.raises(ParamsError, match=r"strategy phase 'top' .*train=\['pooler'\] selects no parameters"):
        run_phase(model, PhaseRun(0, 1, spec), DATA, context(model))


def crash_after(epoch_to_crash: int):  # type: ignore[no-untyped-def]
    def hook(metrics: dict[str, float], epoch: int) -> None:
        if epoch == epoch_to_crash:
            raise KeyboardInterrupt

    return hook


@pytest.mark.parametrize(
    "stop",
    [
        {"max_steps": 12},  # 96 rows, batch 8: the steps of one epoch
        {"lr": 1e-9, "early_stopping": EarlyStopping(metric="accuracy", patience=1)},  # nothing improves
    ],
    ids=["max-steps", "early-stop"],
)
def test_a_phase_that_stopped_before_the_crash_stays_stopped_on_resume(tmp_path: Path, stop: dict) -> None:
    spec = phase(epochs=4, **stop)
    straight = still_model()
    done = run_phase(straight, PhaseRun(0, 1, spec), DATA, context(straight))
    last = len(done.history)
    assert last < 4

    crashed = still_model()
    store = PhaseCheckpoints(tmp_path / "ckpt")
    with pytest.raises(KeyboardInterrupt):
        run_phase(
            crashed,
            PhaseRun(0, 1, spec),
            DATA,
            context(crashed, checkpoints=store, on_epoch=crash_after(last)),
        )
    assert json.loads((store.folder / "state.json").read_text())["stopped"] is True

    resumed = still_model()
    result = run_phase(resumed, PhaseRun(0, 1, spec), DATA, context(resumed, checkpoints=store))
    assert result.resumed_from_epoch == last
    assert [h["epoch"] for h in result.history] == [h["epoch"] for h in done.history]
    assert result.trainable_params == done.trainable_params
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_a_checkpoint_of_other_trainable_parameters_is_refused(tmp_path: Path) -> None:
    store = PhaseCheckpoints(tmp_path / "ckpt")
    first = still_model()
    lower = phase(train=["layers[0:1]", "head"], epochs=3)
    with pytest.raises(KeyboardInterrupt):
        run_phase(
            first, PhaseRun(0, 1, lower), DATA, context(first, checkpoints=store, on_epoch=crash_after(1))
        )
    upper = phase(train=["layers[1:2]", "head"], epochs=3)  # same shapes: the optimizer would load
    second = still_model()
    with pytest.raises(
        TrainingError, match=r"bottom: checkpoint .*ckpt was written for other trainable.*delete"
    ):
        run_phase(second, PhaseRun(0, 1, upper), DATA, context(second, checkpoints=store))


def test_a_non_finite_update_is_never_checkpointed_or_handed_on(tmp_path: Path) -> None:
    """A NaN gradient in the very last step of epoch 2: its loss was finite, so only the weights
    (or the validation loss) can tell; epoch 1 stays the latest checkpoint."""
    model = still_model()
    store = PhaseCheckpoints(tmp_path / "ckpt")
    query = dict(model.named_parameters())["backbone.encoder.layer.0.attention.self.query.weight"]
    backwards = [0]

    def poison_last_backward_of_epoch_2(grad: torch.Tensor) -> torch.Tensor:
        backwards[0] += 1
        return grad * float("nan") if backwards[0] == 24 else grad  # 12 micro-batches an epoch

    query.register_hook(poison_last_backward_of_epoch_2)
    ctx = context(model, checkpoints=store, log_every=10_000)
    with pytest.raises(TrainingError, match="bottom: weights became non-finite at epoch 2") as err:
        run_phase(model, PhaseRun(0, 1, phase(epochs=3)), DATA, ctx)
    assert "precision=fp32" not in str(err.value)  # already fp32: the advice is the lr alone
    assert json.loads((store.folder / "state.json").read_text())["epoch"] == 1
    saved = store.load()
    assert saved is not None and all(torch.isfinite(w).all() for w in saved.weights.values())


def test_rng_state_restores_every_generator_mid_stream(tmp_path: Path) -> None:
    random.gauss(0, 1)  # leaves Python's second Gaussian cached
    np.random.standard_normal()  # and numpy's
    np.random.randint(10, size=3)
    torch.save(rng_state(), tmp_path / "rng.pt")

    def draws() -> tuple[list[float], torch.Tensor]:
        numbers = [random.gauss(0, 1), random.random(), float(np.random.standard_normal()), np.random.rand()]
        return numbers, torch.rand(2)

    expected = draws()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = draws()
    assert again[0] == expected[0] and torch.equal(again[1], expected[1])
