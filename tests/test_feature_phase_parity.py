"""A phase means the same on cached features as on tokens: the cache is an optimisation only.

Each test runs one tiny phase on both paths (`cache_features` on and off) and compares what the
spec promises: the anchor's pull on the pooler, the optimizer steps and their lr under `grad_accum`,
the stages of `unfreeze: gradual`; and a cache file that cannot be read is encoded again.
Full-batch phases (one window of all 96 rows) make both paths take the same steps on the same rows,
so their weights agree to float precision and any difference in meaning shows.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_tuning_engine import DATA, model_for, phase, snapshot
from torch.optim.optimizer import register_optimizer_step_pre_hook

from bitune.device import make_accelerator
from bitune.model.classifier import BituneClassifier
from bitune.model.layer_groups import resolve_layer_groups
from bitune.params import EarlyStopping, PhaseSpec, TrainParams
from bitune.tuning.features import encode_rows
from bitune.tuning.phase import PhaseContext, PhaseResult, run_phase
from bitune.tuning.schedule import PhaseRun

ROWS = len(DATA.train)  # 96


def fp32_context(model: BituneClassifier, **kw) -> PhaseContext:  # type: ignore[no-untyped-def]
    """fp32 on any device: the two paths are compared to float precision, not bf16's."""
    pretrained = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    accelerator = make_accelerator(TrainParams(precision="fp32"))
    return PhaseContext(accelerator, resolve_layer_groups(model.backbone), pretrained, **kw)


def both_paths(
    spec: PhaseSpec, pooling: str = "default", **kw
) -> dict[bool, tuple[BituneClassifier, PhaseResult]]:  # type: ignore[no-untyped-def]
    """{cache_features: (trained model, result)} for the same spec and the same starting weights."""
    out = {}
    for cache in (True, False):
        model = model_for(pooling=pooling)
        result = run_phase(
            model,
            PhaseRun(0, 1, spec.model_copy(update={"cache_features": cache})),
            DATA,
            fp32_context(model, **kw),
        )
        assert result.used_feature_cache == cache
        out[cache] = (model, result)
    return out


def pooler_drift(model: BituneClassifier, pretrained: BituneClassifier) -> float:
    before = dict(pretrained.backbone.pooler.named_parameters())
    return (
        sum(((p - before[n]) ** 2).sum().item() for n, p in model.backbone.pooler.named_parameters()) ** 0.5
    )


@pytest.mark.parametrize(("mode", "anchor_rows"), [("gradient", None), ("decoupled", None), ("gradient", 48)])
def test_anchor_pulls_the_pooler_on_cached_features_as_on_tokens(mode: str, anchor_rows: int | None) -> None:
    """p10 of the audit: the pooler is a backbone weight, so the anchor holds it on both paths."""
    spec = phase(
        name="head",
        train=["head", "pooler"],
        epochs=5,
        lr=1e-2,
        batch_size=ROWS,
        anchor=10.0,
        anchor_mode=mode,
        anchor_rows=anchor_rows,
    )
    runs = both_paths(spec)
    start = model_for(pooling="default")
    cached, tokens = (pooler_drift(runs[c][0], start) for c in (True, False))
    unanchored = both_paths(spec.model_copy(update={"anchor": 0.0}))
    free = pooler_drift(unanchored[True][0], start)
    assert tokens < 0.7 * free, "the anchor must hold the pooler at all for this test to mean anything"
    assert cached == pytest.approx(tokens, rel=1e-3)
    for name, param in runs[True][0].named_parameters():
        assert torch.allclose(param, dict(runs[False][0].named_parameters())[name], atol=1e-5), name
    weight = 10.0 * (anchor_rows or ROWS) / ROWS
    for cache in (True, False):
        last = runs[cache][1].history[-1]
        assert last["anchor_weight"] == pytest.approx(weight)
        assert last["anchor"] == pytest.approx(tokens**2, rel=1e-3)


def test_grad_accum_takes_the_same_optimizer_steps_and_lrs_on_both_paths() -> None:
    """p9 of the audit: batches of 8 in windows of 5 are 3 steps an epoch (the last window short)."""
    spec = phase(name="head", train=["head"], epochs=2, lr=1e-2, batch_size=8, grad_accum=5, warmup=0.2)
    rates: dict[bool, list[float]] = {True: [], False: []}
    for cache in (True, False):
        model = model_for()
        handle = register_optimizer_step_pre_hook(
            lambda opt, a, k, cache=cache: rates[cache].append(opt.param_groups[0]["lr"])
        )
        try:
            run = PhaseRun(0, 1, spec.model_copy(update={"cache_features": cache}))
            result = run_phase(model, run, DATA, fp32_context(model))
        finally:
            handle.remove()
        assert result.used_feature_cache == cache
        assert result.train_samples == 2 * ROWS
    assert len(rates[False]) == 2 * 3
    assert rates[True] == pytest.approx(rates[False])


def test_cached_features_log_the_same_step_curve_as_tokens() -> None:
    """MLflow's step charts (loss, anchor, lr every `log_every` steps) exist for a head phase on
    cached features too, at the same steps and lrs as on tokens: 96 rows in batches of 8, 24 steps."""
    spec = phase(
        name="head", train=["head", "pooler"], epochs=2, lr=1e-2, batch_size=8, warmup=0.25, anchor=1.0
    )
    logged: dict[bool, list[tuple[int, dict[str, float]]]] = {True: [], False: []}
    for cache in (True, False):
        model = model_for(pooling="default")  # the model's pooler: a backbone weight the anchor holds
        hook = lambda metrics, step, cache=cache: logged[cache].append((step, metrics))  # noqa: E731
        run = PhaseRun(0, 1, spec.model_copy(update={"cache_features": cache}))
        run_phase(model, run, DATA, fp32_context(model, on_step=hook, log_every=4))
    steps = [step for step, _ in logged[True]]
    assert steps == [step for step, _ in logged[False]] == list(range(4, 25, 4))
    assert [m["lr"] for _, m in logged[True]] == pytest.approx([m["lr"] for _, m in logged[False]])
    for _, metrics in logged[True]:
        assert set(metrics) == {"loss", "anchor", "lr"}
        assert metrics["loss"] > 0 and metrics["anchor"] >= 0
    assert logged[True][-1][1]["anchor"] > 0  # the pooler moved from its pretrained weights


def test_one_accumulation_window_of_all_rows_is_the_same_step_on_both_paths() -> None:
    """12 batches of 8 in one window: both paths step on the mean gradient over all 96 rows."""
    spec = phase(name="head", train=["head"], epochs=3, lr=1e-2, batch_size=8, grad_accum=12)
    runs = both_paths(spec, pooling="mean")
    tokens = dict(runs[False][0].named_parameters())
    start = dict(model_for().named_parameters())
    for name, param in runs[True][0].named_parameters():
        assert torch.allclose(param, tokens[name], atol=1e-5), name
    assert not torch.equal(tokens["head.1.weight"], start["head.1.weight"])


def test_unreadable_feature_cache_is_encoded_again_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """p11 of the audit: a truncated cache file is a cache miss with one warning, never a crash."""
    cache = tmp_path / "features.safetensors"
    spec = phase(name="head", train=["head"], epochs=2, lr=1e-2)
    model = model_for()
    intact = run_phase(model, PhaseRun(0, 1, spec), DATA, fp32_context(model, feature_cache=cache))
    whole = cache.read_bytes()
    cache.write_bytes(whole[: len(whole) // 2])
    model = model_for()
    with caplog.at_level(logging.WARNING, logger="bitune"):
        again = run_phase(model, PhaseRun(0, 1, spec), DATA, fp32_context(model, feature_cache=cache))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(cache) in warnings[0], warnings
    assert again.used_feature_cache
    for now, before in zip(again.history, intact.history, strict=True):  # same features, same phase
        assert now == pytest.approx(before)
    saved = load_file(str(cache))
    fresh = encode_rows(model_for(), DATA.train, 64, 0, torch.device("cpu"))
    assert torch.allclose(saved["train"], fresh, atol=1e-5) and len(saved["validation"]) == len(
        DATA.validation
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.name]  # replaced whole: no temp file left


def test_gradual_unfreezing_on_cached_features_trains_the_head_alone_first() -> None:
    """The stages as on tokens: epoch 1 the head, then head and pooler; the same weights each epoch."""
    spec = phase(
        name="head", train=["head", "pooler"], unfreeze="gradual", epochs=3, lr=1e-2, batch_size=ROWS
    )
    at_epoch: dict[bool, dict[int, dict[str, torch.Tensor]]] = {True: {}, False: {}}
    start = snapshot(model_for(pooling="default"))
    for cache in (True, False):
        model = model_for(pooling="default")

        def record(metrics: dict, epoch: int, model: BituneClassifier = model, cache: bool = cache) -> None:
            at_epoch[cache][epoch] = snapshot(model)

        run = PhaseRun(0, 1, spec.model_copy(update={"cache_features": cache}))
        result = run_phase(model, run, DATA, fp32_context(model, on_epoch=record))
        assert result.used_feature_cache == cache
        counts = [row["trainable_params"] for row in result.history]
        head = sum(p.numel() for p in model.head.parameters())
        assert counts == [head, counts[1], counts[1]] and counts[1] > head
        pooler = [n for n in start if n.startswith("backbone.pooler.")]
        assert all(torch.equal(at_epoch[cache][1][n], start[n]) for n in pooler), "pooler moved in epoch 1"
        assert any(not torch.equal(at_epoch[cache][2][n], start[n]) for n in pooler), "pooler never trained"
    for epoch in (1, 2, 3):
        for name, value in at_epoch[True][epoch].items():
            assert torch.allclose(value, at_epoch[False][epoch][name], atol=1e-5), (epoch, name)


def test_early_stopping_after_gradual_unfreezing_restores_the_pooler_too() -> None:
    """Best epoch 1 (head alone): the pooler, trained in the worse epochs after, goes back with it."""
    spec = phase(
        name="head",
        train=["head", "pooler"],
        unfreeze="gradual",
        epochs=4,
        lr=0.3,
        batch_size=ROWS,
        early_stopping=EarlyStopping(metric="loss", patience=2),
    )
    start = snapshot(model_for(pooling="default"))
    for cache, (model, result) in both_paths(spec).items():
        assert (result.best_epoch, result.kept_epoch, len(result.history)) == (1, 1, 3), cache
        for name, param in model.named_parameters():
            if name.startswith("backbone.pooler."):
                assert torch.equal(param, start[name]), (cache, name)
