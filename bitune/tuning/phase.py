"""One training phase, top to bottom: freeze, build the optimizer, step, evaluate, checkpoint.

Kept explicit on purpose (nanoGPT style): no framework hides the optimisation step. `accelerate`
supplies only the device, bf16 autocast and DDP, so the same loop runs on a laptop CPU, one GPU,
or under `accelerate launch` on many. A phase that trains only the top runs on cached features
instead (`feature_phase`); the anchor, the guards and the DDP wrapper live in their own modules.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bitune.errors import ParamsError, TrainingError
from bitune.evaluation.metrics import summary_metrics
from bitune.model.classifier import BituneClassifier
from bitune.model.layer_groups import gradual_unfreeze_order
from bitune.params import PhaseSpec
from bitune.tuning.anchor import PretrainedAnchor, effective_anchor
from bitune.tuning.batching import BatchList, length_grouped_batches, pad_batch, shard_batches
from bitune.tuning.bf16_norms import use_bf16_norms
from bitune.tuning.checkpoint import rng_state, set_rng_state
from bitune.tuning.contrastive import supervised_contrastive_loss
from bitune.tuning.feature_phase import run_on_features, trains_top_only
from bitune.tuning.features import encode_rows
from bitune.tuning.freezing import Selected, freeze_except, set_train_mode, trainable_modules
from bitune.tuning.guards import check_finite, check_resumable, check_validation, remedy, require_parameters
from bitune.tuning.optim import (
    build_optimizer,
    build_scheduler,
    phase_epochs,
    phase_steps,
    token_steps_per_epoch,
)
from bitune.tuning.phase_context import (
    PhaseContext,
    PhaseData,
    PhaseResult,
    averaged,
    hand_on,
    is_better,
    labels_of,
    load_partial,
    predict_logits,
    weight_average,
)
from bitune.tuning.schedule import PhaseRun
from bitune.tuning.wrapped_model import WrappedModel


def sample_train_rows(data: PhaseData, spec: PhaseSpec, seed: int) -> PhaseData:
    """The phase's training rows: all, or a seeded sample of `max_train_rows` kept in file order."""
    limit = spec.max_train_rows
    if limit is None or limit >= len(data.train):
        return data
    chosen = sorted(random.Random(seed).sample(range(len(data.train)), limit))
    sample = [data.train[i] for i in chosen]
    classes = {row["labels"] for row in data.train}
    held = {row["labels"] for row in sample}
    if held != classes:  # a head that never sees a class can never predict it: a useless model, exit 0
        raise ParamsError(
            f"strategy phase {spec.name!r}: max_train_rows {limit} samples {len(held)} of the "
            f"{len(classes)} classes in train; raise it well above {len(classes)} or set it to null "
            "(all rows)"
        )
    return PhaseData(sample, data.validation, data.pad_token_id)


def _batch_loss(
    wrapped: torch.nn.Module, inputs: dict[str, torch.Tensor], spec: PhaseSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """(task loss, loss to minimise): cross-entropy, plus the contrastive term when the phase asks."""
    smoothing = spec.label_smoothing
    if not spec.contrastive:
        logits = wrapped(inputs["input_ids"], inputs["attention_mask"])
        task_loss = F.cross_entropy(logits.float(), inputs["labels"], label_smoothing=smoothing)
        return task_loss, task_loss
    logits, features = wrapped(inputs["input_ids"], inputs["attention_mask"], with_features=True)
    task_loss = F.cross_entropy(logits.float(), inputs["labels"], label_smoothing=smoothing)
    contrast = supervised_contrastive_loss(features, inputs["labels"], spec.contrastive_temperature)
    return task_loss, task_loss + spec.contrastive * contrast


def _with_last(items: Iterable[Any]) -> Iterator[tuple[Any, bool]]:
    """(item, is it the last one): the end of an epoch as the iteration itself ends, not a count."""
    iterator = iter(items)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for upcoming in iterator:
        yield current, False
        current = upcoming
    yield current, True


def _stages(run: PhaseRun, model: BituneClassifier, ctx: PhaseContext) -> list[Selected]:
    """Trainable set per epoch: all at once, or ULMFiT's top-down unfreezing (one more group a stage)."""
    names = run.spec.train
    everything = trainable_modules(model, names, ctx.groups)
    if run.spec.unfreeze == "all":
        return [everything]
    by_name = dict(everything)
    order = gradual_unfreeze_order(ctx.groups, [n for n in names if n != "head"])
    active = ["head"] if "head" in names else []
    stages = [[("head", by_name["head"])]] if active else []
    for step in order:
        added = [n for n in step if n in by_name and n not in active]
        if added:
            active = active + added
            stages.append([(n, by_name[n]) for n in active])
    return stages or [everything]


def run_phase(model: BituneClassifier, run: PhaseRun, data: PhaseData, ctx: PhaseContext) -> PhaseResult:
    """Train one phase in place; with early stopping (patience), the best epoch's weights are
    restored, else the last epoch's (or their average) are handed on: see `PhaseResult.kept`."""
    spec = run.spec
    fix = remedy(spec.lr, ctx.accelerator.mixed_precision)  # advice of the NaN guard's errors
    device = ctx.accelerator.device
    model.to(device)
    if ctx.bf16_norms and ctx.accelerator.mixed_precision == "bf16":
        use_bf16_norms(model)
    torch.manual_seed(ctx.seed + run.index)
    data = sample_train_rows(data, spec, ctx.seed + run.index)
    if spec.cache_features and trains_top_only(spec.train):
        return run_on_features(model, run, data, ctx)
    result = PhaseResult(key=run.key)

    stages = _stages(run, model, ctx)
    all_selected = {name: module for stage in stages for name, module in stage}
    require_parameters(list(all_selected.items()), run)
    freeze_except(model, list(all_selected.items()))
    phase_ids = {id(p) for module in all_selected.values() for p in module.parameters()}
    phase_params = [p for p in model.parameters() if id(p) in phase_ids]
    phase_names = [n for n, p in model.named_parameters() if id(p) in phase_ids]

    def phase_state() -> dict[str, torch.Tensor]:
        """Every parameter this phase may train (any stage): what a checkpoint must hold."""
        return {n: p.detach().clone().cpu() for n, p in model.named_parameters() if id(p) in phase_ids}

    optimizer = build_optimizer(list(all_selected.items()), spec, len(ctx.groups.layers))
    world, rank = ctx.accelerator.num_processes, ctx.accelerator.process_index
    if len(data.train) < world:
        raise TrainingError(
            f"{run.key}: {len(data.train)} training rows for {world} processes; lower train.processes"
        )
    steps_per_epoch = token_steps_per_epoch(spec, len(data.train), world)
    total_steps = phase_steps(spec, steps_per_epoch)
    epochs = phase_epochs(spec, steps_per_epoch)
    scheduler = build_scheduler(optimizer, spec, total_steps)
    average = weight_average(model, phase_ids, spec)
    lengths = [len(r["input_ids"]) for r in data.train]
    val_labels = labels_of(data.validation)

    start_epoch, best_value, best_state, step, stopped = 1, None, None, 0, False
    resumed = ctx.checkpoints.load() if ctx.checkpoints else None
    if resumed is not None:
        assert ctx.checkpoints is not None
        check_resumable(resumed.info.get("trainable"), phase_names, run, ctx.checkpoints.folder)
        load_partial(model, resumed.weights)
        optimizer.load_state_dict(resumed.training_state["optimizer"])
        scheduler.load_state_dict(resumed.training_state["scheduler"])
        set_rng_state(resumed.training_state["rng"])
        if average is not None:
            average.load_state_dict(resumed.training_state["average"])
        result.history = resumed.info["history"]
        result.best_epoch, best_value = resumed.info["best_epoch"], resumed.info["best_value"]
        step, start_epoch = resumed.info["step"], resumed.epoch + 1
        stopped = bool(resumed.info.get("stopped", False))  # early stop or max_steps: train no more
        best_state = resumed.best
        result.resumed_from_epoch = resumed.epoch
        if result.history:
            result.trainable_params = int(result.history[-1]["trainable_params"])

    anchor_weight = effective_anchor(spec, len(data.train))
    with contextlib.closing(WrappedModel(model, ctx)) as wrapper:  # released however the loop ends
        for epoch in range(start_epoch, epochs + 1):
            if stopped:
                break
            selected = stages[min(epoch - 1, len(stages) - 1)]
            result.trainable_params = freeze_except(model, selected)
            anchor = PretrainedAnchor.build(model, ctx.pretrained, anchor_weight)
            set_train_mode(model, selected)
            wrapped = wrapper.for_trainable()
            batches = length_grouped_batches(
                lengths, spec.batch_size, ctx.seed * 1000 + run.index * 100 + epoch, min_rows=world
            )
            plan = shard_batches(batches, spec.grad_accum, world, rank)
            loader: torch.utils.data.DataLoader = torch.utils.data.DataLoader(
                data.train,  # type: ignore[arg-type]
                batch_sampler=BatchList([micro_batch.rows for micro_batch in plan]),
                collate_fn=lambda rows: pad_batch(rows, data.pad_token_id),
                pin_memory=device.type == "cuda",  # so the copies below need not wait for the GPU
            )
            # the loss sum stays on the device: reading it back every step would stall a GPU's queue
            t0, seen, micro, running = time.perf_counter(), 0, 0, torch.zeros((), device=device)
            optimizer.zero_grad(set_to_none=True)
            bar = tqdm(loader, desc=f"{run.key} epoch {epoch}/{epochs}", leave=False, disable=ctx.quiet)
            for batch, last in _with_last(bar):
                share = plan[micro]
                micro += 1
                sync = micro % spec.grad_accum == 0 or last
                no_sync = (
                    ctx.accelerator.no_sync(wrapped) if (world > 1 and not sync) else contextlib.nullcontext()
                )
                with no_sync:
                    with ctx.autocast():
                        inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                        task_loss, loss = _batch_loss(wrapped, inputs, spec)
                    # the window's mean gradient over its rows, however many rows and batches it has
                    ctx.accelerator.backward(loss * share.weight)
                seen += share.batch_rows
                running += task_loss.detach()
                if not sync:
                    continue
                anchor.optimizer_step(anchor_weight, spec.anchor_mode, optimizer)
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                if average is not None:
                    average.update()
                step += 1
                if step % ctx.log_every == 0:
                    check_finite(running, run.key, epoch, step, fix, phase_params)
                if ctx.on_step and step % ctx.log_every == 0:  # after the guard: never log a NaN as a metric
                    ctx.on_step(
                        {
                            "loss": task_loss.item(),
                            "anchor": anchor.term(),
                            "lr": float(scheduler.get_last_lr()[0]),
                        },
                        step,
                    )
                if spec.max_steps and step >= spec.max_steps:
                    break
            # also waits for the device's queue; checks the weights so no NaN is validated or saved
            check_finite(running, run.key, epoch, step, fix, phase_params)
            epoch_seconds = time.perf_counter() - t0  # the training loop only, not the validation pass below
            result.train_seconds += epoch_seconds
            result.train_samples += seen  # rows of the whole batches: every process took its slice
            with averaged(average):
                logits = predict_logits(model, data.validation, ctx, data.pad_token_id)
            val = summary_metrics(logits, val_labels)
            check_validation(val, run.key, epoch, fix)
            metrics = {f"val_{k}": v for k, v in val.items()} | {
                "train_loss": running.item() / max(1, micro),
                "anchor": anchor.term(),
                "anchor_weight": anchor_weight,
                "trainable_params": float(result.trainable_params),
                "train_samples_per_s": seen / max(1e-9, epoch_seconds),
            }
            result.history.append({"epoch": float(epoch), **metrics})
            watched = val[spec.early_stopping.metric]
            if is_better(spec.early_stopping.metric, watched, best_value):
                best_value, result.best_epoch = watched, epoch
                with averaged(average):
                    best_state = phase_state() if spec.early_stopping.patience else None
            patience = spec.early_stopping.patience
            stopped = bool(patience and epoch - result.best_epoch >= patience) or bool(
                spec.max_steps and step >= spec.max_steps
            )
            if ctx.checkpoints and ctx.accelerator.is_main_process:
                ctx.checkpoints.save(
                    epoch,
                    {
                        "history": result.history,
                        "best_epoch": result.best_epoch,
                        "best_value": best_value,
                        "step": step,
                        "stopped": stopped,
                        "trainable": phase_names,
                    },
                    phase_state(),
                    best_state,
                    {
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "rng": rng_state(),
                    }
                    | ({"average": average.state_dict()} if average is not None else {}),
                )
            ctx.accelerator.wait_for_everyone()
            if ctx.on_epoch:
                ctx.on_epoch(metrics, epoch)
    return hand_on(model, result, best_state, average)


__all__ = [
    "PhaseContext",
    "PhaseData",
    "PhaseResult",
    "effective_anchor",
    "encode_rows",
    "predict_logits",
    "run_phase",
    "sample_train_rows",
]
