"""A phase that trains only the top (pooler if used, head) on features the frozen backbone encodes
once: many cheap epochs on a (rows × hidden) matrix instead of re-running the encoder every epoch.

An optimisation, never a change of meaning: the phase's spec trains here as it would on tokens, with
the same anchor on the pooler, the same optimizer steps (one per `batch_size × grad_accum` rows) and
the same gradual-unfreezing stages.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from bitune.evaluation.metrics import summary_metrics
from bitune.model.classifier import BituneClassifier
from bitune.model.layer_groups import LayerGroups, unfreeze_stages
from bitune.params import PhaseSpec
from bitune.tuning.anchor import PretrainedAnchor, effective_anchor
from bitune.tuning.features import cached_features
from bitune.tuning.freezing import Selected, freeze_except, set_train_mode, trainable_modules
from bitune.tuning.guards import check_finite, check_validation, remedy, require_parameters
from bitune.tuning.optim import (
    build_optimizer,
    build_scheduler,
    feature_steps_per_epoch,
    phase_epochs,
    phase_steps,
)
from bitune.tuning.phase_context import (
    PhaseContext,
    PhaseData,
    PhaseResult,
    averaged,
    hand_on,
    is_better,
    labels_of,
    weight_average,
)
from bitune.tuning.schedule import PhaseRun

TOP_ONLY = {"head", "pooler"}


def trains_top_only(train: list[str]) -> bool:
    """Whether a phase's groups all sit above the encoder, so its features can be encoded once."""
    return set(train) <= TOP_ONLY


def feature_stages(
    model: BituneClassifier, spec: PhaseSpec, selected: Selected, groups: LayerGroups
) -> list[Selected]:
    """Trainable set per epoch, the stages the phase has on tokens: all at once, or with
    `unfreeze: gradual` the head alone first and then the pooler (`unfreeze_stages`)."""
    if spec.unfreeze == "all":
        return [selected]
    by_name = dict(selected)
    stages = unfreeze_stages(groups, spec.train, model.uses_pooler)
    return [[(name, by_name[name]) for name in names] for names in stages]


def run_on_features(
    model: BituneClassifier, run: PhaseRun, data: PhaseData, ctx: PhaseContext
) -> PhaseResult:
    """Train the top on cached features; `train_seconds` includes the encoding pass."""
    spec = run.spec
    fix = remedy(spec.lr, ctx.accelerator.mixed_precision)  # advice of the NaN guard's errors
    result = PhaseResult(key=run.key, used_feature_cache=True)
    device = ctx.accelerator.device
    selected = trainable_modules(model, spec.train, ctx.groups)
    require_parameters(selected, run)
    stages = feature_stages(model, spec, selected, ctx.groups)
    trained = [p for _, module in selected for p in module.parameters()]
    trained_ids = {id(p) for p in trained}  # every stage's: what early stopping keeps and restores
    cache = ctx.feature_cache
    if cache is not None and spec.max_train_rows is not None and spec.max_train_rows == len(data.train):
        cache = cache.with_name(
            f"{cache.stem}-rows{len(data.train)}-seed{ctx.seed + run.index}{cache.suffix}"
        )
    t0 = time.perf_counter()
    feats = cached_features(
        model,
        {"train": data.train, "validation": data.validation},
        cache,
        ctx.eval_batch_size,
        data.pad_token_id,
        device,
        ctx.autocast,
        quiet=ctx.quiet,
    )
    encode_seconds = time.perf_counter() - t0
    train_x, val_x = feats["train"].to(device), feats["validation"].to(device)
    train_y, val_y = labels_of(data.train).to(device), labels_of(data.validation)
    optimizer = build_optimizer(selected, spec, len(ctx.groups.layers))
    average = weight_average(model, trained_ids, spec)
    # One optimizer step per accumulation window, as on tokens; the window's mean loss in one pass
    # gives the mean gradient over its rows that accumulating its batches would.
    window = spec.batch_size * spec.grad_accum
    steps_per_epoch = feature_steps_per_epoch(spec, len(train_x))
    scheduler = build_scheduler(optimizer, spec, phase_steps(spec, steps_per_epoch))
    anchor_weight = effective_anchor(spec, len(data.train))
    generator = torch.Generator().manual_seed(ctx.seed + run.index)
    best_value, best_state, step, samples = None, None, 0, 0
    patience = spec.early_stopping.patience
    train_t0 = time.perf_counter()
    for epoch in range(1, phase_epochs(spec, steps_per_epoch) + 1):
        stage = stages[min(epoch - 1, len(stages) - 1)]
        result.trainable_params = freeze_except(model, stage)
        anchor = PretrainedAnchor.build(model, ctx.pretrained, anchor_weight)  # the pooler, if it trains
        set_train_mode(model, stage)
        order = torch.randperm(len(train_x), generator=generator).to(device)
        total = torch.zeros((), device=device)  # summed on the device: no sync per (tiny) step
        seen = 0
        for start in range(0, len(order), window):
            idx = order[start : start + window]
            loss = F.cross_entropy(
                model.top(train_x[idx]).float(), train_y[idx], label_smoothing=spec.label_smoothing
            )
            loss.backward()
            anchor.optimizer_step(anchor_weight, spec.anchor_mode, optimizer)
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if average is not None:
                average.update()
            total += loss.detach() * len(idx)
            seen += len(idx)
            step += 1
            if step % ctx.log_every == 0:  # as the token path: stop a diverged phase within log_every steps
                check_finite(total, run.key, epoch, step, fix, trained)
            if ctx.on_step and step % ctx.log_every == 0:  # after the guard: never log a NaN as a metric
                ctx.on_step(
                    {
                        "loss": loss.item(),
                        "anchor": anchor.term(),
                        "lr": float(scheduler.get_last_lr()[0]),
                    },
                    step,
                )
            if spec.max_steps and step >= spec.max_steps:
                break
        check_finite(total, run.key, epoch, step, fix, trained)
        samples += seen
        model.eval()
        with averaged(average), torch.inference_mode():
            val = summary_metrics(model.top(val_x).float().cpu(), val_y)
        check_validation(val, run.key, epoch, fix)
        metrics = {f"val_{k}": v for k, v in val.items()} | {
            "train_loss": total.item() / seen,
            "anchor": anchor.term(),
            "anchor_weight": anchor_weight,
            "trainable_params": float(result.trainable_params),
        }
        result.history.append({"epoch": float(epoch), **metrics})
        if ctx.on_epoch:
            ctx.on_epoch(metrics, epoch)
        watched = val[spec.early_stopping.metric]
        if is_better(spec.early_stopping.metric, watched, best_value):
            best_value, result.best_epoch = watched, epoch
            if patience:
                with averaged(average):
                    best_state = {
                        n: p.detach().clone().cpu()
                        for n, p in model.named_parameters()
                        if id(p) in trained_ids
                    }
        out_of_patience = bool(patience and epoch - result.best_epoch >= patience)
        if out_of_patience or bool(spec.max_steps and step >= spec.max_steps):
            break
    result.train_seconds = time.perf_counter() - train_t0 + encode_seconds
    result.train_samples = samples
    return hand_on(model, result, best_state, average)
