"""One training phase, top to bottom: freeze, build the optimizer, step, evaluate, checkpoint.

Kept explicit on purpose (nanoGPT style): no framework hides the optimisation step. `accelerate`
supplies only the device, bf16 autocast and DDP, so the same loop runs on a laptop CPU, one GPU,
or under `accelerate launch` on many.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm

from bitune.errors import TrainingError
from bitune.evaluation.metrics import summary_metrics
from bitune.model.classifier import BituneClassifier
from bitune.model.layer_groups import LayerGroups, gradual_unfreeze_order
from bitune.params import PhaseSpec
from bitune.tuning.averaging import WeightAverage
from bitune.tuning.batching import BatchList, length_grouped_batches, pad_batch
from bitune.tuning.checkpoint import PhaseCheckpoints, rng_state, set_rng_state
from bitune.tuning.contrastive import supervised_contrastive_loss
from bitune.tuning.features import cached_features, encode_rows
from bitune.tuning.freezing import Selected, freeze_except, set_train_mode, trainable_modules, trainable_names
from bitune.tuning.optim import build_optimizer, build_scheduler
from bitune.tuning.schedule import PhaseRun

Rows = list[dict[str, Any]]
MetricsHook = Callable[[dict[str, float], int], None]
TOP_ONLY = {"head", "pooler"}


@dataclass
class PhaseData:
    train: Rows
    validation: Rows
    pad_token_id: int


@dataclass
class PhaseContext:
    accelerator: Accelerator
    groups: LayerGroups
    pretrained: dict[str, torch.Tensor]  # backbone parameters before any tuning (anchor, drift)
    seed: int = 0
    eval_batch_size: int = 128
    checkpoints: PhaseCheckpoints | None = None
    feature_cache: Path | None = None  # used only while the backbone is still pretrained
    on_step: MetricsHook | None = None  # (metrics, global step), every `log_every` optimizer steps
    on_epoch: MetricsHook | None = None  # (metrics, epoch)
    log_every: int = 10  # also how often the NaN guard reads the loss back (each read syncs a GPU)
    progress: bool = True  # tqdm bars for training and evaluation (main process only)
    compile: bool = False  # torch.compile the forward pass (dynamic shapes: batches are padded per batch)


@dataclass
class PhaseResult:
    key: str
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best: dict[str, float] = field(default_factory=dict)
    trainable_params: int = 0
    train_seconds: float = 0.0
    train_samples: int = 0
    used_feature_cache: bool = False
    resumed_from_epoch: int | None = None

    @property
    def samples_per_second(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds else 0.0


def _autocast(accelerator: Accelerator) -> contextlib.AbstractContextManager[Any]:
    return accelerator.autocast()


@torch.inference_mode()
def predict_logits(model: BituneClassifier, rows: Rows, ctx: PhaseContext, pad_token_id: int) -> torch.Tensor:
    """Logits for `rows` in order; every process evaluates the whole (small) split, so no gather."""
    was_training = model.training
    model.eval()
    out = torch.empty(len(rows), model.num_labels)
    batches = length_grouped_batches(
        [len(r["input_ids"]) for r in rows], ctx.eval_batch_size, 0, shuffle=False
    )
    for ids in tqdm(batches, desc="evaluate", leave=False, disable=_quiet(ctx)):
        batch = pad_batch([rows[i] for i in ids], pad_token_id)
        with _autocast(ctx.accelerator):
            logits = model(
                batch["input_ids"].to(ctx.accelerator.device),
                batch["attention_mask"].to(ctx.accelerator.device),
            )
        out[ids] = logits.float().cpu()
    model.train(was_training)
    return out


def _quiet(ctx: PhaseContext) -> bool:
    return not (ctx.progress and ctx.accelerator.is_local_main_process)


def _labels(rows: Rows) -> torch.Tensor:
    return torch.as_tensor([r["labels"] for r in rows], dtype=torch.long)


def sample_train_rows(data: PhaseData, spec: PhaseSpec, seed: int) -> PhaseData:
    """The phase's training rows: all, or a seeded sample of `max_train_rows` kept in file order."""
    limit = spec.max_train_rows
    if limit is None or limit >= len(data.train):
        return data
    chosen = sorted(random.Random(seed).sample(range(len(data.train)), limit))
    return PhaseData([data.train[i] for i in chosen], data.validation, data.pad_token_id)


def effective_anchor(spec: PhaseSpec, train_rows: int) -> float:
    """λ for this phase's data. The anchor is a Gaussian prior centred on the pretrained weights; with
    the task loss a *mean* over N rows, a fixed prior's weight falls as 1/N. Without that, a λ chosen
    on 2,000 rows holds a 60,000-row run as tightly as the small one and costs it accuracy.
    """
    if spec.anchor_rows is None or train_rows <= 0:
        return spec.anchor
    return spec.anchor * spec.anchor_rows / train_rows


@dataclass
class _Anchor:
    """The trainable backbone tensors and their pretrained values, as parallel lists for `_foreach` ops."""

    params: list[torch.Tensor]
    refs: list[torch.Tensor]

    @classmethod
    def build(cls, model: BituneClassifier, pretrained: dict[str, torch.Tensor], weight: float) -> _Anchor:
        device = next(model.parameters()).device
        chosen = [(p, pretrained[n]) for n, p in model.backbone.named_parameters() if p.requires_grad]
        if weight <= 0:
            chosen = []
        return cls([p for p, _ in chosen], [ref.to(device) for _, ref in chosen])

    @torch.no_grad()
    def term(self) -> float:
        """‖θ − θ_pre‖² over the trainable backbone parameters: the 'pretrained loss' (for logging)."""
        if not self.params:
            return 0.0
        norms = torch._foreach_norm(torch._foreach_sub(self.params, self.refs))
        return float(torch.stack(norms).double().pow(2).sum())

    @torch.no_grad()
    def add_gradient(self, weight: float) -> None:
        """∇ of λ·‖θ − θ_pre‖² is 2λ(θ − θ_pre): added to the gradients once per optimizer step.

        Exactly the gradient of the anchored loss, without building the penalty through autograd
        every micro-batch (which cost a third of the bottom phase's throughput, mostly in the word
        embeddings). Two in-place `_foreach` adds (g += 2λθ, g −= 2λθ_pre): no θ − θ_pre temporary
        the size of the model, 2.5× faster on a CPU than subtracting first (12 vs 31 ms for MiniLM).
        """
        pairs = [(p.grad, p, r) for p, r in zip(self.params, self.refs, strict=True) if p.grad is not None]
        if not pairs:
            return
        grads, params, refs = (list(x) for x in zip(*pairs, strict=True))
        torch._foreach_add_(grads, params, alpha=2.0 * weight)
        torch._foreach_add_(grads, refs, alpha=-2.0 * weight)

    @torch.no_grad()
    def pull(self, weight: float, optimizer: torch.optim.Optimizer) -> None:
        """The decoupled anchor, after an optimizer step: θ ← θ − lr·2λ(θ − θ_pre) with each
        parameter group's current lr, i.e. a plain gradient step on λ·‖θ − θ_pre‖².

        Through Adam the anchor's gradient is divided by each weight's gradient RMS, so a weight the
        task barely moves is pulled back at nearly the full lr whatever λ is; outside Adam the pull
        is proportional to the distance, as L2-SP intends, and λ means the same for any model.
        """
        refs = {id(p): r for p, r in zip(self.params, self.refs, strict=True)}
        for group in optimizer.param_groups:
            pairs = [(p, refs[id(p)]) for p in group["params"] if id(p) in refs]
            if not pairs:
                continue
            rate = 2.0 * weight * group["lr"]
            params, targets = [p for p, _ in pairs], [r for _, r in pairs]
            torch._foreach_mul_(params, 1.0 - rate)
            torch._foreach_add_(params, targets, alpha=rate)


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


def _check_finite(loss_sum: torch.Tensor, key: str, epoch: int, step: int, lr: float) -> None:
    """The NaN/inf guard. Reads the epoch's running loss sum: one sync per call, not per step."""
    value = loss_sum.item()
    if not math.isfinite(value):
        raise TrainingError(
            f"{key}: loss became {value} at epoch {epoch}, by step {step}; lower the phase's lr "
            f"(now {lr}) or use train.precision=fp32"
        )


def _better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if metric == "loss" else value > best


def _trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone().cpu() for n, p in model.named_parameters() if p.requires_grad}


def _load_partial(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device))


def _average(model: torch.nn.Module, ids: set[int], spec: PhaseSpec) -> WeightAverage | None:
    """The phase's weight average over every parameter it may train, when `spec.ema` asks for one."""
    if spec.ema is None:
        return None
    return WeightAverage([p for p in model.parameters() if id(p) in ids], spec.ema)


def _averaged(average: WeightAverage | None) -> contextlib.AbstractContextManager[Any]:
    return average.applied() if average is not None else contextlib.nullcontext()


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
    """Train one phase in place; with early stopping, the best epoch's weights are restored."""
    spec = run.spec
    result = PhaseResult(key=run.key)
    device = ctx.accelerator.device
    model.to(device)
    torch.manual_seed(ctx.seed + run.index)
    data = sample_train_rows(data, spec, ctx.seed + run.index)
    top_only = set(spec.train) <= TOP_ONLY
    if top_only and spec.cache_features:
        return _run_on_features(model, run, data, ctx, result)

    stages = _stages(run, model, ctx)
    all_selected = {name: module for stage in stages for name, module in stage}
    freeze_except(model, list(all_selected.items()))
    phase_ids = {id(p) for module in all_selected.values() for p in module.parameters()}

    def phase_state() -> dict[str, torch.Tensor]:
        """Every parameter this phase may train (any stage): what a checkpoint must hold."""
        return {n: p.detach().clone().cpu() for n, p in model.named_parameters() if id(p) in phase_ids}

    optimizer = build_optimizer(list(all_selected.items()), spec, len(ctx.groups.layers))
    world = ctx.accelerator.num_processes
    steps_per_epoch = math.ceil(math.ceil(len(data.train) / spec.batch_size) / spec.grad_accum)
    total_steps = spec.max_steps or steps_per_epoch * spec.epochs
    scheduler = build_scheduler(optimizer, spec, total_steps)
    average = _average(model, phase_ids, spec)
    lengths = [len(r["input_ids"]) for r in data.train]
    val_labels = _labels(data.validation)

    start_epoch, best_value, best_state, step = 1, None, None, 0
    resumed = ctx.checkpoints.load() if ctx.checkpoints else None
    if resumed is not None:
        _load_partial(model, resumed.weights)
        optimizer.load_state_dict(resumed.training_state["optimizer"])
        scheduler.load_state_dict(resumed.training_state["scheduler"])
        set_rng_state(resumed.training_state["rng"])
        if average is not None:
            average.load_state_dict(resumed.training_state["average"])
        result.history = resumed.info["history"]
        result.best_epoch, best_value = resumed.info["best_epoch"], resumed.info["best_value"]
        step, start_epoch = resumed.info["step"], resumed.epoch + 1
        best_state = resumed.best
        result.resumed_from_epoch = resumed.epoch

    anchor_weight = effective_anchor(spec, len(data.train))
    stopped_early = False
    for epoch in range(start_epoch, spec.epochs + 1):
        selected = stages[min(epoch - 1, len(stages) - 1)]
        result.trainable_params = freeze_except(model, selected)
        anchor = _Anchor.build(model, ctx.pretrained, anchor_weight)
        set_train_mode(model, selected)
        wrapped: torch.nn.Module = ctx.accelerator.prepare_model(model) if world > 1 else model
        if ctx.compile:
            wrapped = torch.compile(wrapped, dynamic=True)  # type: ignore[assignment]
        batches = length_grouped_batches(lengths, spec.batch_size, ctx.seed * 1000 + run.index * 100 + epoch)
        loader: torch.utils.data.DataLoader = torch.utils.data.DataLoader(
            data.train,  # type: ignore[arg-type]
            batch_sampler=BatchList(batches),
            collate_fn=lambda rows: pad_batch(rows, data.pad_token_id),
            pin_memory=device.type == "cuda",  # so the copies below need not wait for the GPU
        )
        if world > 1:
            loader = ctx.accelerator.prepare_data_loader(loader)
        # the loss sum stays on the device: reading it back every step would stall a GPU's queue
        t0, seen, running = time.perf_counter(), 0, torch.zeros((), device=device)
        optimizer.zero_grad(set_to_none=True)
        bar = tqdm(loader, desc=f"{run.key} epoch {epoch}/{spec.epochs}", leave=False, disable=_quiet(ctx))
        for micro, batch in enumerate(bar, start=1):
            sync = micro % spec.grad_accum == 0 or micro == len(loader)
            no_sync = (
                ctx.accelerator.no_sync(wrapped) if (world > 1 and not sync) else contextlib.nullcontext()
            )
            with no_sync:
                with _autocast(ctx.accelerator):
                    inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                    task_loss, loss = _batch_loss(wrapped, inputs, spec)
                ctx.accelerator.backward(loss / spec.grad_accum)
            seen += len(batch["labels"])
            running += task_loss.detach()
            if not sync:
                continue
            decoupled = spec.anchor_mode == "decoupled"
            if anchor.params and not decoupled:
                anchor.add_gradient(anchor_weight)
            optimizer.step()
            if anchor.params and decoupled:
                anchor.pull(anchor_weight, optimizer)  # at this step's lr, before the scheduler moves it
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if average is not None:
                average.update()
            step += 1
            if step % ctx.log_every == 0:
                _check_finite(running, run.key, epoch, step, spec.lr)
            if ctx.on_step and step % ctx.log_every == 0:  # after the guard: never log a NaN as a metric
                ctx.on_step(
                    {
                        "train_loss": task_loss.item(),
                        "anchor": anchor.term(),
                        "lr": float(scheduler.get_last_lr()[0]),
                    },
                    step,
                )
            if spec.max_steps and step >= spec.max_steps:
                break
        _check_finite(running, run.key, epoch, step, spec.lr)  # also waits for the device's queue
        epoch_seconds = time.perf_counter() - t0  # the training loop only, not the validation pass below
        result.train_seconds += epoch_seconds
        result.train_samples += seen * world  # split batches: each process saw its slice
        with _averaged(average):
            logits = predict_logits(model, data.validation, ctx, data.pad_token_id)
        val = summary_metrics(logits, val_labels)
        metrics = {f"val_{k}": v for k, v in val.items()} | {
            "train_loss": running.item() / max(1, micro),
            "anchor": anchor.term(),
            "anchor_weight": anchor_weight,
            "trainable_params": float(result.trainable_params),
            "train_samples_per_s": seen * world / max(1e-9, epoch_seconds),
        }
        result.history.append({"epoch": float(epoch), **metrics})
        watched = val[spec.early_stopping.metric]
        if _better(spec.early_stopping.metric, watched, best_value):
            best_value, result.best_epoch = watched, epoch
            with _averaged(average):
                best_state = phase_state() if spec.early_stopping.patience else None
        patience = spec.early_stopping.patience
        stopped_early = bool(patience and epoch - result.best_epoch >= patience)
        if ctx.checkpoints and ctx.accelerator.is_main_process:
            ctx.checkpoints.save(
                epoch,
                {
                    "history": result.history,
                    "best_epoch": result.best_epoch,
                    "best_value": best_value,
                    "step": step,
                    "trainable": trainable_names(model),
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
        if stopped_early or (spec.max_steps and step >= spec.max_steps):
            break
    if best_state is not None and result.best_epoch != len(result.history):
        _load_partial(model, best_state)
    elif average is not None:
        average.copy_to_model()
    result.best = _best_entry(result)
    model.requires_grad_(False)
    model.eval()
    return result


def _best_entry(result: PhaseResult) -> dict[str, float]:
    if not result.history:
        return {}
    return next(h for h in result.history if int(h["epoch"]) == result.best_epoch)


def _run_on_features(
    model: BituneClassifier, run: PhaseRun, data: PhaseData, ctx: PhaseContext, result: PhaseResult
) -> PhaseResult:
    """The top (pooler if used, head) trained on features encoded once by the frozen backbone."""
    spec = run.spec
    device = ctx.accelerator.device
    selected = trainable_modules(model, spec.train, ctx.groups)
    result.trainable_params = freeze_except(model, selected)
    result.used_feature_cache = True
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
        lambda: _autocast(ctx.accelerator),
    )
    encode_seconds = time.perf_counter() - t0
    train_x, val_x = feats["train"].to(device), feats["validation"].to(device)
    train_y, val_y = _labels(data.train).to(device), _labels(data.validation)
    optimizer = build_optimizer(selected, spec, len(ctx.groups.layers))
    average = _average(model, {id(p) for _, m in selected for p in m.parameters()}, spec)
    steps_per_epoch = math.ceil(len(train_x) / spec.batch_size)
    scheduler = build_scheduler(optimizer, spec, spec.max_steps or steps_per_epoch * spec.epochs)
    generator = torch.Generator().manual_seed(ctx.seed + run.index)
    best_value, best_state, step = None, None, 0
    train_t0 = time.perf_counter()
    for epoch in range(1, spec.epochs + 1):
        set_train_mode(model, selected)
        order = torch.randperm(len(train_x), generator=generator).to(device)
        total = torch.zeros((), device=device)  # summed on the device: no sync per (tiny) step
        for start in range(0, len(order), spec.batch_size):
            idx = order[start : start + spec.batch_size]
            loss = F.cross_entropy(
                model.top(train_x[idx]).float(), train_y[idx], label_smoothing=spec.label_smoothing
            )
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if average is not None:
                average.update()
            total += loss.detach() * len(idx)
            step += 1
        _check_finite(total, run.key, epoch, step, spec.lr)
        model.eval()
        with _averaged(average), torch.inference_mode():
            val = summary_metrics(model.top(val_x).float().cpu(), val_y)
        metrics = {f"val_{k}": v for k, v in val.items()} | {"train_loss": total.item() / len(train_x)}
        result.history.append({"epoch": float(epoch), **metrics})
        if ctx.on_epoch:
            ctx.on_epoch(metrics, epoch)
        watched = val[spec.early_stopping.metric]
        if _better(spec.early_stopping.metric, watched, best_value):
            best_value, result.best_epoch = watched, epoch
            with _averaged(average):
                best_state = _trainable_state(model)
        patience = spec.early_stopping.patience
        if (patience and epoch - result.best_epoch >= patience) or (
            spec.max_steps and step >= spec.max_steps
        ):
            break
    if spec.early_stopping.patience and best_state is not None:
        _load_partial(model, best_state)
    elif average is not None:
        average.copy_to_model()
    result.train_seconds = time.perf_counter() - train_t0 + encode_seconds
    result.train_samples = len(train_x) * len(result.history)
    result.best = _best_entry(result)
    model.requires_grad_(False)
    model.eval()
    return result


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
