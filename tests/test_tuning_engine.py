"""The tuning engine on a tiny random encoder: what trains, what stays put, resume, guards."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import MODEL_TYPES, tiny_backbone

from bitune.device import make_accelerator
from bitune.errors import ParamsError, TrainingError
from bitune.model.classifier import BituneClassifier
from bitune.model.layer_groups import resolve_layer_groups
from bitune.params import EarlyStopping, PhaseSpec, StrategyParams, TrainParams
from bitune.tuning.batching import length_grouped_batches, pad_batch
from bitune.tuning.checkpoint import PhaseCheckpoints
from bitune.tuning.freezing import freeze_except, trainable_modules
from bitune.tuning.optim import build_optimizer, build_scheduler
from bitune.tuning.phase import PhaseContext, PhaseData, run_phase, sample_train_rows
from bitune.tuning.schedule import PhaseRun, expand_strategy
from bitune.tuning.step_plan import check_step_plan, planned_steps


def rows(n: int, seed: int = 0) -> list[dict]:
    """Learnable toy data: label 1 iff token 7 appears; lengths vary."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(4, 20)
        ids = [2] + [rng.randint(10, 100) for _ in range(length)] + [3]
        label = rng.random() < 0.5
        if label:
            ids[rng.randint(1, length)] = 7
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": int(label)})
    return out


def model_for(model_type: str = "bert", pooling: str = "mean", layers: int = 4) -> BituneClassifier:
    torch.manual_seed(0)
    return BituneClassifier(tiny_backbone(model_type, num_layers=layers), 2, pooling, 0.0)


def context(model: BituneClassifier, **kw) -> PhaseContext:  # type: ignore[no-untyped-def]
    pretrained = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    train = TrainParams(precision=os.environ.get("BITUNE_TEST_PRECISION", "auto"))  # bf16: see below
    return PhaseContext(make_accelerator(train), resolve_layer_groups(model.backbone), pretrained, **kw)


def phase(**kw) -> PhaseSpec:  # type: ignore[no-untyped-def]
    base = {
        "name": "bottom",
        "train": ["embeddings", "layers[0:2]", "head"],
        "epochs": 2,
        "lr": 1e-3,
        "batch_size": 8,
    }
    return PhaseSpec(**(base | kw))


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def moved(before: dict[str, torch.Tensor], model: torch.nn.Module, prefix: str) -> bool:
    return any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n.startswith(prefix))


DATA = PhaseData(rows(96), rows(32, seed=1), pad_token_id=0)


def test_bottom_phase_moves_only_unfrozen_groups() -> None:
    model = model_for()
    before = snapshot(model)
    run_phase(model, PhaseRun(0, 1, phase()), DATA, context(model))
    assert moved(before, model, "backbone.embeddings.")
    assert moved(before, model, "backbone.encoder.layer.0.") and moved(
        before, model, "backbone.encoder.layer.1."
    )
    assert not moved(before, model, "backbone.encoder.layer.2.") and not moved(
        before, model, "backbone.encoder.layer.3."
    )
    assert not moved(before, model, "backbone.pooler.")  # mean pooling: the pooler is unused
    assert moved(before, model, "head.")


def test_head_phase_on_cached_features_moves_only_the_head_and_learns(tmp_path: Path) -> None:
    model = model_for()
    before = snapshot(model)
    spec = phase(name="head", train=["head", "pooler"], epochs=40, lr=5e-2, schedule="constant")
    cache = tmp_path / "features.safetensors"
    result = run_phase(model, PhaseRun(0, 1, spec), DATA, context(model, feature_cache=cache))
    assert result.used_feature_cache and cache.exists()
    assert not any(moved(before, model, f"backbone.{g}") for g in ("embeddings", "encoder", "pooler"))
    assert moved(before, model, "head.")
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_max_train_rows_samples_the_same_rows_each_time_and_keeps_their_order() -> None:
    spec = phase(max_train_rows=40)
    first = sample_train_rows(DATA, spec, seed=3)
    assert len(first.train) == 40 and first.validation is DATA.validation
    assert first.train == sample_train_rows(DATA, spec, seed=3).train
    assert first.train != sample_train_rows(DATA, spec, seed=4).train
    positions = [next(i for i, r in enumerate(DATA.train) if r is row) for row in first.train]
    assert positions == sorted(positions)
    assert sample_train_rows(DATA, phase(max_train_rows=500), seed=3) is DATA  # fewer rows: all of them


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # tokens
        {"max_train_rows": 50, "batch_size": 7, "grad_accum": 2},  # a last window of one batch
        {"train": ["head"], "max_train_rows": 50, "batch_size": 7, "grad_accum": 2},  # cached features
        {"train": ["head"], "cache_features": False, "batch_size": 5, "grad_accum": 3},  # head on tokens
        {"max_steps": 5},
        {"epochs": None, "max_steps": 29},  # a length in steps: 12 a epoch, the third cut short
        {"train": ["head"], "epochs": None, "max_steps": 29},
    ],
)
def test_the_step_plan_counts_the_steps_each_phase_takes(monkeypatch, overrides) -> None:  # type: ignore[no-untyped-def]
    """`check_step_plan` judges warmups before the first phase by these counts: they must be the phase's."""
    import bitune.tuning.feature_phase as feature_phase
    import bitune.tuning.phase as phase_module

    schedulers = []

    def recording(optimizer, spec, total_steps):  # type: ignore[no-untyped-def]
        schedulers.append((build_scheduler(optimizer, spec, total_steps), total_steps))
        return schedulers[-1][0]

    monkeypatch.setattr(phase_module, "build_scheduler", recording)
    monkeypatch.setattr(feature_phase, "build_scheduler", recording)
    spec = phase(**overrides)
    model = model_for()
    run_phase(model, PhaseRun(0, 1, spec), DATA, context(model))
    [(scheduler, total)] = schedulers
    assert scheduler.last_epoch == total  # the phase took the steps it planned
    if spec.epochs is None:  # "epochs or steps": max_steps alone is the phase's length, not a cap on 1 epoch
        assert total == 29
    assert planned_steps(spec, len(DATA.train), processes=1) == total


def test_a_warmup_past_a_later_phase_is_refused_by_the_step_plan() -> None:
    strategy = StrategyParams(
        name="bidirectional",
        phases=[phase(name="head", train=["head"], epochs=3), phase(name="bottom", epochs=1, warmup=12)],
    )
    check_step_plan(strategy, train_rows=97, processes=1)  # 13 batches of 8: one step after warmup
    with pytest.raises(
        ParamsError, match=r"strategy phase 'bottom': warmup 12 steps, but the phase takes 12"
    ):
        check_step_plan(strategy, train_rows=96, processes=1)
    with pytest.raises(ParamsError, match="but the phase takes 12"):
        check_step_plan(
            strategy, train_rows=97, processes=2
        )  # merged: a batch of one row has no share for two


def test_a_sample_that_misses_a_class_is_a_params_error_naming_the_phase() -> None:
    """One row holds one class: a head trained on it predicts that class for every text."""
    with pytest.raises(ParamsError, match=r"phase 'bottom': max_train_rows 1 samples 1 of the 2 classes"):
        sample_train_rows(DATA, phase(max_train_rows=1), seed=3)
    assert {r["labels"] for r in sample_train_rows(DATA, phase(max_train_rows=8), seed=3).train} == {0, 1}


def test_head_phase_with_max_train_rows_encodes_and_trains_only_the_sample(tmp_path: Path) -> None:
    model = model_for()
    spec = phase(name="head", train=["head"], epochs=3, lr=5e-2, max_train_rows=40)
    cache = tmp_path / "features.safetensors"
    result = run_phase(model, PhaseRun(0, 1, spec), DATA, context(model, feature_cache=cache))
    assert result.train_samples == 40 * 3
    sampled_cache = tmp_path / "features-rows40-seed0.safetensors"
    assert not cache.exists() and sampled_cache.exists()  # a full-data cache is never overwritten by a sample
    assert len(load_file(str(sampled_cache))["train"]) == 40


BF16_HEAD_PHASE = """
import sys, torch
from pathlib import Path
from safetensors.torch import load_file
from test_tuning_engine import DATA, context, model_for, phase
from bitune.tuning.features import encode_rows
from bitune.tuning.phase import run_phase
from bitune.tuning.schedule import PhaseRun

model = model_for()
fp32 = encode_rows(model, DATA.train, 128, 0, torch.device("cpu"))  # the phase's batches
cache = Path(sys.argv[1])
head = PhaseRun(0, 1, phase(name="head", train=["head"], epochs=1))
run_phase(model, head, DATA, context(model, feature_cache=cache))
bf16 = load_file(str(cache))["train"]
assert (fp32 - bf16).abs().max() > 1e-5, "features were encoded in fp32 under bf16 training"
torch.testing.assert_close(bf16, fp32, atol=0.1, rtol=0.05)
"""


def test_feature_encoding_runs_in_the_phase_precision(tmp_path: Path) -> None:
    """bf16 training encodes its cached features under bf16 autocast too (it used to encode in fp32).

    A process of its own: accelerate's precision is a process-wide singleton.
    """
    env = os.environ | {"BITUNE_TEST_PRECISION": "bf16", "PYTHONPATH": str(Path(__file__).parent)}
    done = subprocess.run(
        [sys.executable, "-c", BF16_HEAD_PHASE, str(tmp_path / "f.safetensors")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]


SWITCH_PRECISION = """
import pytest, torch
from bitune.device import make_accelerator, reset_accelerator
from bitune.params import TrainParams

def matmul_dtype(accelerator):
    with accelerator.autocast():
        return (torch.ones(2, 2) @ torch.ones(2, 2)).dtype

assert matmul_dtype(make_accelerator(TrainParams(device="cpu", precision="fp32"))) == torch.float32
with pytest.raises(ValueError, match="already been initialized"):
    make_accelerator(TrainParams(device="cpu", precision="bf16"))  # accelerate's singleton refuses
reset_accelerator()
assert matmul_dtype(make_accelerator(TrainParams(device="cpu", precision="bf16"))) == torch.bfloat16
"""


def test_reset_accelerator_lets_one_process_run_fp32_then_bf16() -> None:
    """What bench/strategies.py needs: an fp32 Trainer baseline, then bitune in bf16, in one process."""
    done = subprocess.run(
        [sys.executable, "-c", SWITCH_PRECISION], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_default_pooling_trains_the_pooler_in_the_head_phase() -> None:
    model = model_for(pooling="default")
    before = snapshot(model)
    spec = phase(name="head", train=["head", "pooler"], epochs=2, lr=1e-2)
    run_phase(model, PhaseRun(0, 1, spec), DATA, context(model))
    assert moved(before, model, "backbone.pooler.") and not moved(before, model, "backbone.encoder.")


def test_frozen_modules_stay_in_eval_mode_and_get_no_grads() -> None:
    model = model_for()
    ctx = context(model)
    selected = trainable_modules(model, ["layers[0:1]", "head"], ctx.groups)
    n = freeze_except(model, selected)
    assert n == sum(p.numel() for _, m in selected for p in m.parameters())
    from bitune.tuning.freezing import set_train_mode

    set_train_mode(model, selected)
    assert model.backbone.encoder.layer[0].training and not model.backbone.encoder.layer[3].training
    batch = pad_batch(DATA.train[:4], 0)
    model(batch["input_ids"], batch["attention_mask"]).sum().backward()
    assert model.backbone.encoder.layer[3].attention.self.query.weight.grad is None
    assert model.backbone.encoder.layer[0].attention.self.query.weight.grad is not None


@pytest.mark.parametrize("mode", ["gradient", "decoupled"])
def test_anchor_keeps_weights_closer_to_pretrained(mode: str) -> None:
    drifts = []
    for anchor in (0.0, 50.0):
        model = model_for()
        ctx = context(model)
        run_phase(model, PhaseRun(0, 1, phase(anchor=anchor, anchor_mode=mode, epochs=3)), DATA, ctx)
        params = dict(model.backbone.named_parameters())
        drifts.append(sum(((params[n] - p0) ** 2).sum().item() for n, p0 in ctx.pretrained.items()))
    assert drifts[1] < drifts[0]


def test_layer_wise_lr_decay_lowers_lower_layers() -> None:
    model = model_for()
    groups = resolve_layer_groups(model.backbone)
    selected = trainable_modules(model, ["embeddings", "layers[0:]", "head"], groups)
    opt = build_optimizer(selected, phase(lr=1.0, layer_lr_decay=0.5), num_layers=4)
    lr = {g["group"]: g["lr"] for g in opt.param_groups}
    assert (
        lr["head"] == 1.0
        and lr["layers.3"] == 0.5
        and lr["layers.0"] == 0.5**4
        and lr["embeddings"] == 0.5**5
    )
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups if all(p.ndim < 2 for p in g["params"]))


def test_the_optimizer_update_is_one_fused_kernel_on_cpu() -> None:
    """The foreach update costs 4.6× the fused one on a CPU; the Trainer's default is fused too."""
    model = model_for()
    selected = trainable_modules(model, ["embeddings", "head"], resolve_layer_groups(model.backbone))
    assert build_optimizer(selected, phase(), num_layers=4).defaults["fused"] is True


def test_warmup_then_linear_decay() -> None:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = build_scheduler(opt, phase(warmup=0.2), total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[-1] < lrs[2] and lrs == sorted(lrs[:2]) + sorted(lrs[2:], reverse=True)


def test_length_grouped_batches_cover_every_row_once_and_pad_less() -> None:
    lengths = [random.Random(i).randint(3, 60) for i in range(500)]
    batches = length_grouped_batches(lengths, 16, seed=3)
    assert sorted(i for b in batches for i in b) == list(range(500))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    naive = sum(
        len(b) * max(lengths[i] for i in b) for b in [list(range(500))[i : i + 16] for i in range(0, 500, 16)]
    )
    assert padded < 0.8 * naive
    assert length_grouped_batches(lengths, 16, seed=3) == batches


def test_nan_loss_stops_the_phase_with_a_clear_error() -> None:
    model = model_for()
    with torch.no_grad():
        model.head[1].weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="loss became nan"):
        run_phase(model, PhaseRun(0, 1, phase()), DATA, context(model))


def test_early_stopping_restores_the_best_epoch() -> None:
    model = model_for()
    spec = phase(epochs=6, lr=3e-2, early_stopping=EarlyStopping(metric="loss", patience=2))
    result = run_phase(model, PhaseRun(0, 1, spec), DATA, context(model))
    best = min(h["val_loss"] for h in result.history)
    assert result.best["val_loss"] == best
    from bitune.evaluation.metrics import summary_metrics
    from bitune.tuning.phase import predict_logits

    ctx = context(model)
    now = summary_metrics(
        predict_logits(model, DATA.validation, ctx, 0), torch.tensor([r["labels"] for r in DATA.validation])
    )
    assert now["loss"] == pytest.approx(best, rel=1e-4)


@pytest.mark.parametrize("ema", [None, 0.9], ids=["raw", "weight-average"])
def test_resume_from_epoch_checkpoint_matches_an_uninterrupted_phase(
    tmp_path: Path, ema: float | None
) -> None:
    spec = phase(epochs=3, ema=ema)  # with ema, the average's state must come back too
    straight = model_for()
    run_phase(straight, PhaseRun(0, 1, spec), DATA, context(straight))

    crashed = model_for()
    store = PhaseCheckpoints(tmp_path / "ckpt")
    ctx = context(crashed, checkpoints=store)

    def crash_after_epoch_2(metrics: dict[str, float], epoch: int) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    ctx.on_epoch = crash_after_epoch_2
    with pytest.raises(KeyboardInterrupt):
        run_phase(crashed, PhaseRun(0, 1, spec), DATA, ctx)
    # the checkpoint of an epoch is written before its hooks run, so epoch 2 survived the crash
    resumed_model = model_for()
    result = run_phase(resumed_model, PhaseRun(0, 1, spec), DATA, context(resumed_model, checkpoints=store))
    assert result.resumed_from_epoch == 2
    assert [int(h["epoch"]) for h in result.history] == [1, 2, 3]
    for (name, a), b in zip(straight.named_parameters(), resumed_model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_gradual_unfreeze_adds_one_group_per_epoch_top_down() -> None:
    """ULMFiT: epoch 1 trains the head, each later epoch adds the next group down (layer 3, 2, 1,
    0, then the embeddings), and each group steps at lr · decay^(depth from the top)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    model = model_for()
    ctx = context(model)
    snapshots = [snapshot(model)]
    seen: list[float] = []

    def on_epoch(metrics: dict[str, float], epoch: int) -> None:
        seen.append(metrics["trainable_params"])
        snapshots.append(snapshot(model))

    ctx.on_epoch = on_epoch
    rates: dict[str, float] = {}

    def record(optimizer: torch.optim.Optimizer, args: object, kwargs: object) -> None:
        rates.update({g["group"]: g["lr"] for g in optimizer.param_groups})

    spec = phase(
        name="gradual",
        train=["head", "layers[0:]", "embeddings"],
        unfreeze="gradual",
        epochs=6,
        layer_lr_decay=0.4,
        schedule="constant",
    )
    handle = register_optimizer_step_pre_hook(record)
    try:
        run_phase(model, PhaseRun(0, 1, spec), DATA, ctx)
    finally:
        handle.remove()
    assert seen == sorted(seen) and len(set(seen)) == 6
    layers = ctx.groups.layers
    groups = {
        "head": names_in(model, [model.head]),
        **{f"layers.{i}": names_in(model, [layers[i]]) for i in range(4)},
        "embeddings": names_in(model, ctx.groups.embeddings),
    }
    top_down = ["head", "layers.3", "layers.2", "layers.1", "layers.0", "embeddings"]
    for epoch in range(1, 7):
        now = {n for n, p in snapshots[epoch].items() if not torch.equal(snapshots[epoch - 1][n], p)}
        training = [g for g in top_down if now & groups[g]]
        assert training == top_down[:epoch], f"epoch {epoch}: {training}"
        assert now <= set().union(*(groups[g] for g in top_down[:epoch]))
    assert rates == {g: pytest.approx(1e-3 * 0.4**depth) for depth, g in enumerate(top_down)}


def test_expand_strategy_orders_prelude_then_rounds() -> None:
    head = phase(name="head", train=["head"])
    strategy = StrategyParams(
        name="x", rounds=2, prelude=[phase(name="probe", train=["head"])], phases=[head, phase()]
    )
    keys = [r.key for r in expand_strategy(strategy)]
    assert keys == ["probe", "head", "bottom", "head-r2", "bottom-r2"]


def names_in(model: torch.nn.Module, modules: list[torch.nn.Module]) -> set[str]:
    """The qualified names of `modules`' parameters inside `model`."""
    ids = {id(p) for m in modules for p in m.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def changed(before: dict[str, torch.Tensor], model: torch.nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_supported_architecture_runs_a_bottom_phase(model_type: str) -> None:
    """On every architecture, the bottom phase moves its embeddings and layer 0 (and the head) and
    leaves every other backbone weight (upper layers, pooler, final norms) exactly as it was."""
    model = model_for(model_type, layers=3)
    before = snapshot(model)
    spec = phase(train=["embeddings", "layers[0:1]", "head"], epochs=1)
    ctx = context(model)
    result = run_phase(model, PhaseRun(0, 1, spec), PhaseData(rows(32), rows(16, 1), 0), ctx)
    assert result.history
    now = changed(before, model)
    embeddings = names_in(model, ctx.groups.embeddings)
    layer_0 = names_in(model, [ctx.groups.layers[0]])
    head = names_in(model, [model.head])
    assert embeddings and now & embeddings, "the embeddings did not move"
    assert now & layer_0, "layer 0 did not move"
    assert now & head, "the head did not move"
    assert names_in(model, ctx.groups.layers[1:]), "no upper layers found"
    assert now <= embeddings | layer_0 | head, sorted(now - embeddings - layer_0 - head)


def test_anchor_gradient_and_term_equal_autograd_of_the_pretrained_loss() -> None:
    from bitune.tuning.anchor import PretrainedAnchor

    model = model_for()
    freeze_except(model, trainable_modules(model, ["layers[0:1]"], resolve_layer_groups(model.backbone)))
    pretrained = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    trained = {n: p for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trained and all("layer.0." in n for n in trained)
    penalty = 0.7 * sum(((p - pretrained[n]) ** 2).sum() for n, p in trained.items())
    penalty.backward()
    expected = {n: p.grad.clone() for n, p in trained.items()}
    for p in trained.values():
        p.grad.zero_()
    anchor = PretrainedAnchor.build(model, pretrained, 0.7)
    anchor.add_gradient(0.7)
    for n, p in trained.items():
        assert torch.allclose(p.grad, expected[n], atol=1e-6), n
    assert anchor.term() == pytest.approx(penalty.item() / 0.7, rel=1e-5)
    assert PretrainedAnchor.build(model, pretrained, 0.0).term() == 0.0  # λ = 0: nothing anchored


def test_decoupled_anchor_steps_each_group_toward_pretrained_at_its_own_lr() -> None:
    from bitune.tuning.anchor import PretrainedAnchor

    model = model_for()
    groups = resolve_layer_groups(model.backbone)
    selected = trainable_modules(model, ["layers[0:2]", "head"], groups)
    freeze_except(model, selected)
    opt = build_optimizer(selected, phase(lr=0.1, layer_lr_decay=0.5), num_layers=4)
    pretrained = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    before = snapshot(model)
    PretrainedAnchor.build(model, pretrained, 0.7).pull(0.7, opt)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    assert len({lr_of[id(p)] for n, p in params.items() if n.startswith("backbone.") and id(p) in lr_of}) == 2
    for name, p in params.items():
        backbone = name.removeprefix("backbone.")
        if not p.requires_grad or backbone not in pretrained:  # frozen, or the head: not anchored
            assert torch.equal(p, before[name]), name
            continue
        rate = 2 * 0.7 * lr_of[id(p)]
        expected = before[name] - rate * (before[name] - pretrained[backbone])
        assert torch.allclose(p, expected, atol=1e-6), name


def test_anchor_weight_falls_with_data_size_when_given_for_a_row_count() -> None:
    from bitune.tuning.anchor import effective_anchor

    fixed = phase(anchor=0.01)
    prior = phase(anchor=0.01, anchor_rows=1800)
    assert effective_anchor(fixed, 60_000) == 0.01
    assert effective_anchor(prior, 1800) == pytest.approx(0.01)
    assert effective_anchor(prior, 60_000) == pytest.approx(0.01 * 1800 / 60_000)
    model = model_for()
    spec = phase(anchor=0.5, anchor_rows=48, epochs=1)
    result = run_phase(model, PhaseRun(0, 1, spec), DATA, context(model))  # 96 rows: λ halves
    assert result.history[0]["anchor_weight"] == pytest.approx(0.25)


def test_nan_guard_fires_in_the_head_phase_on_cached_features() -> None:
    model = model_for()
    with torch.no_grad():
        model.head[1].weight.fill_(float("nan"))
    spec = phase(name="head", train=["head"], epochs=2)
    with pytest.raises(TrainingError, match="head: loss became nan at epoch 1"):
        run_phase(model, PhaseRun(0, 1, spec), DATA, context(model))


def test_nan_guard_still_fires_when_the_loss_is_read_back_only_at_epoch_end() -> None:
    """The loss stays on the device between reads; the end-of-epoch read must still catch a NaN."""
    model = model_for()
    with torch.no_grad():
        model.head[1].weight.fill_(float("nan"))
    ctx = context(model, log_every=10_000)
    with pytest.raises(TrainingError, match="loss became nan at epoch 1"):
        run_phase(model, PhaseRun(0, 1, phase()), DATA, ctx)


@pytest.mark.slow
def test_compiled_phase_trains_like_the_eager_one() -> None:
    """train.compile=true: same losses as eager mode, and the frozen layers still do not move.

    Weights are not compared element-wise: Adam's first steps are close to lr·sign(g), so gradient
    entries near zero that round differently in fused kernels flip sign and the paths part.
    """
    eager, compiled = model_for(), model_for()
    before = snapshot(compiled)
    spec = phase(epochs=1)
    eager_result = run_phase(eager, PhaseRun(0, 1, spec), DATA, context(eager))
    compiled_result = run_phase(compiled, PhaseRun(0, 1, spec), DATA, context(compiled, compile=True))
    eager_epoch, compiled_epoch = eager_result.history[0], compiled_result.history[0]
    assert compiled_epoch["train_loss"] == pytest.approx(eager_epoch["train_loss"], rel=1e-3)
    assert compiled_epoch["val_loss"] == pytest.approx(eager_epoch["val_loss"], abs=1e-2)
    assert moved(before, compiled, "backbone.embeddings.") and moved(
        before, compiled, "backbone.encoder.layer.1."
    )
    assert not moved(before, compiled, "backbone.encoder.layer.2.")
    assert not moved(before, compiled, "backbone.encoder.layer.3.")


def test_weight_average_is_the_bias_corrected_ema_of_the_iterates() -> None:
    from bitune.tuning.averaging import WeightAverage

    param = torch.nn.Parameter(torch.zeros(2))
    average = WeightAverage([param], decay=0.5)
    for value in (1.0, 2.0, 3.0):
        with torch.no_grad():
            param.fill_(value)
        average.update()
    expected = (0.25 * 1 + 0.5 * 2 + 1.0 * 3) / 1.75  # weights d^(t-i), normalised; no pull to 0
    assert torch.allclose(average.shadow[0], torch.full((2,), expected))
    with average.applied():
        assert torch.allclose(param, torch.full((2,), expected))
    assert torch.equal(param.detach(), torch.full((2,), 3.0))  # the raw iterate is back after the block


@pytest.mark.parametrize("train", [["embeddings", "layers[0:2]", "head"], ["head"]])
def test_phase_with_ema_evaluates_and_hands_on_the_averaged_weights(train: list[str]) -> None:
    from bitune.evaluation.metrics import summary_metrics
    from bitune.tuning.phase import predict_logits

    plain, averaged = model_for(), model_for()
    before = snapshot(averaged)
    run_phase(plain, PhaseRun(0, 1, phase(train=train, epochs=3)), DATA, context(plain))
    result = run_phase(
        averaged, PhaseRun(0, 1, phase(train=train, epochs=3, ema=0.9)), DATA, context(averaged)
    )
    # same seed and batches, so the raw iterates match; what the phase hands on differs
    assert moved(snapshot(plain), averaged, "head.")
    assert not moved(before, averaged, "backbone.encoder.layer.2.")  # frozen stays frozen
    labels = torch.tensor([r["labels"] for r in DATA.validation])
    now = summary_metrics(predict_logits(averaged, DATA.validation, context(averaged), 0), labels)
    assert now["loss"] == pytest.approx(result.history[-1]["val_loss"], rel=1e-4)  # evaluated = kept


def test_nan_guard_on_cached_features_stops_within_log_every_steps_without_mlflow() -> None:
    """No step hook (logging off): the cached head phase still reads the loss back every
    `log_every` steps, so a diverged phase stops at step 4, not at the end of a 12-step epoch."""
    model = model_for()
    with torch.no_grad():
        model.head[1].weight.fill_(float("nan"))
    spec = phase(name="head", train=["head"], epochs=1, batch_size=8, cache_features=True)  # 12 steps
    ctx = context(model, log_every=4)
    assert ctx.on_step is None
    with pytest.raises(TrainingError, match=r"head: loss became nan at epoch 1, by step 4;"):
        run_phase(model, PhaseRun(0, 1, spec), DATA, ctx)
