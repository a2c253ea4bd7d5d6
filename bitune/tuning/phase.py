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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from tqdm.auto import tqdm

from bitune.errors import ParamsError, TrainingError
from bitune.evaluation.metrics import summary_metrics
from bitune.model.classifier import BituneClassifier
from bitune.model.layer_groups import LayerGroups, gradual_unfreeze_order
from bitune.params import PhaseSpec
from bitune.tuning.averaging import WeightAverage
from bitune.tuning.batching import (
    BatchList,
    batch_count,
    length_grouped_batches,
    pad_batch,
    shard_batches,
)
from bitune.tuning.checkpoint import PhaseCheckpoints, rng_state, set_rng_state
from bitune.tuning.contrastive import supervised_contrastive_loss
from bitune.tuning.features import cached_features, encode_rows
from bitune.tuning.freezing import Selected, freeze_except, set_train_mode, trainable_modules
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
    log_every: int = 10  # also how often the NaN guard reads the loss and weights back (a GPU sync)
    progress: bool = True  # tqdm bars for training and evaluation (main process only)
    compile: bool = False  # torch.compile the forward pass (dynamic shapes: batches are padded per batch)


@dataclass
class PhaseResult:
    """What a phase did. `best*` is the best epoch *seen* (by `early_stopping.metric`); the weights
    handed on are those of `kept_epoch`, evaluated as `kept`: the best epoch only when
    `early_stopping.patience` is set, else the last epoch (its weight average with `ema`)."""

    key: str
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0  # the epoch with the best watched validation metric seen
    best: dict[str, float] = field(default_factory=dict)  # that epoch's history entry
    kept_epoch: int = 0  # the epoch whose (evaluated) weights the phase hands on
    kept: dict[str, float] = field(default_factory=dict)  # that epoch's history entry
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


def _weights_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ‖θ‖ over `params`, on the device: non-finite iff any weight is.

    A non-finite gradient at any step leaves non-finite weights behind for good (Adam turns an inf
    into NaN, and NaN stays), so reading this at each guard check catches every bad update,
    however late in an epoch, for a tenth of the cost of a gradient norm at every step.
    """
    if not params:
        return torch.zeros(())
    return torch.stack(torch._foreach_norm([p.detach() for p in params])).sum()


def _check_finite(
    loss_sum: torch.Tensor,
    key: str,
    epoch: int,
    step: int,
    lr: float,
    params: Sequence[torch.Tensor] = (),
) -> None:
    """The NaN/inf guard: the epoch's running loss sum and, when given, the trained weights, read
    back together (one sync per call, not per step)."""
    values = torch.stack([loss_sum.float(), _weights_norm(params).float().to(loss_sum.device)])
    loss, weights = values.tolist()
    if not math.isfinite(loss):
        raise TrainingError(
            f"{key}: loss became {loss} at epoch {epoch}, by step {step}; lower the phase's lr "
            f"(now {lr}) or use train.precision=fp32"
        )
    if not math.isfinite(weights):
        raise TrainingError(
            f"{key}: weights became non-finite at epoch {epoch}, by step {step} (a non-finite "
            f"gradient); lower the phase's lr (now {lr}) or use train.precision=fp32"
        )


def _check_validation(val: dict[str, float], key: str, epoch: int, lr: float) -> None:
    """Never checkpoint, keep or hand on weights whose validation loss is not finite."""
    if not math.isfinite(val["loss"]):
        raise TrainingError(
            f"{key}: validation loss became {val['loss']} at epoch {epoch}; lower the phase's lr "
            f"(now {lr}) or use train.precision=fp32"
        )


def _require_parameters(selected: Selected, run: PhaseRun) -> None:
    """A phase whose groups hold no parameters (the pooler under mean pooling) cannot train."""
    if any(p.numel() for _, module in selected for p in module.parameters()):
        return
    spec = run.spec
    raise ParamsError(
        f"strategy phase {spec.name!r} (key {run.key}): train={spec.train} selects no parameters in "
        "this model (the pooler trains only with model.pooling=default); add head or a backbone "
        "group such as layers[-2:] to the phase's train list"
    )


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


class _Wrapped:
    """The model as the training loop calls it: DDP-wrapped (under several processes) and/or
    compiled, built once per phase and again only when the trainable set changes (DDP registers
    the parameters that need gradients when it wraps). Closing undoes what `prepare_model` left
    behind: its entry in the accelerator's model list (one more per call, never removed by
    accelerate) and, under mixed precision, the autocast wrapper it puts on the model's forward."""

    def __init__(self, model: BituneClassifier, ctx: PhaseContext) -> None:
        self.model, self.ctx = model, ctx
        self.module: torch.nn.Module = model
        self.trainable: frozenset[str] | None = None
        self.registered: list[Any] = []  # what prepare_model appended to accelerator._models
        self.patched_forward = False

    def for_trainable(self) -> torch.nn.Module:
        names = frozenset(n for n, p in self.model.named_parameters() if p.requires_grad)
        if names == self.trainable:
            return self.module
        self.close()
        self.trainable = names
        module: torch.nn.Module = self.model
        if self.ctx.accelerator.num_processes > 1:
            models = self.ctx.accelerator._models
            count, own_forward = len(models), "forward" in vars(self.model)
            module = self.ctx.accelerator.prepare_model(self.model)
            self.registered = models[count:]
            self.patched_forward = not own_forward and "forward" in vars(self.model)
        if self.ctx.compile:
            module = torch.compile(module, dynamic=True)  # type: ignore[assignment]
        self.module = module
        return module

    def close(self) -> None:
        models = self.ctx.accelerator._models
        for added in self.registered:
            at = max((i for i, m in enumerate(models) if m is added), default=None)
            if at is not None:
                del models[at]
        if self.patched_forward:
            vars(self.model).pop("forward", None)
            vars(self.model).pop("_original_forward", None)
        self.module, self.trainable, self.registered, self.patched_forward = self.model, None, [], False


def _check_resumable(recorded: list[str] | None, expected: list[str], run: PhaseRun, folder: Path) -> None:
    """A checkpoint resumes only the phase it was written for: the same parameters in the optimizer."""
    if recorded is None or set(recorded) == set(expected):
        return
    only_saved = sorted(set(recorded) - set(expected))
    only_now = sorted(set(expected) - set(recorded))
    raise TrainingError(
        f"{run.key}: checkpoint {folder} was written for other trainable parameters "
        f"(only in checkpoint: {only_saved[:3]}{'…' if len(only_saved) > 3 else ''}, "
        f"only now: {only_now[:3]}{'…' if len(only_now) > 3 else ''}); restore the params and "
        "model it was written with, or delete the folder (or run with --force) to train the phase again"
    )


def run_phase(model: BituneClassifier, run: PhaseRun, data: PhaseData, ctx: PhaseContext) -> PhaseResult:
    """Train one phase in place; with early stopping (patience), the best epoch's weights are
    restored, else the last epoch's (or their average) are handed on: see `PhaseResult.kept`."""
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
    _require_parameters(list(all_selected.items()), run)
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
    steps_per_epoch = math.ceil(batch_count(len(data.train), spec.batch_size, world) / spec.grad_accum)
    total_steps = spec.max_steps or steps_per_epoch * spec.epochs
    scheduler = build_scheduler(optimizer, spec, total_steps)
    average = _average(model, phase_ids, spec)
    lengths = [len(r["input_ids"]) for r in data.train]
    val_labels = _labels(data.validation)

    start_epoch, best_value, best_state, step, stopped = 1, None, None, 0, False
    resumed = ctx.checkpoints.load() if ctx.checkpoints else None
    if resumed is not None:
        assert ctx.checkpoints is not None
        _check_resumable(resumed.info.get("trainable"), phase_names, run, ctx.checkpoints.folder)
        _load_partial(model, resumed.weights)
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
    with contextlib.closing(_Wrapped(model, ctx)) as wrapper:  # released however the loop ends
        for epoch in range(start_epoch, spec.epochs + 1):
            if stopped:
                break
            selected = stages[min(epoch - 1, len(stages) - 1)]
            result.trainable_params = freeze_except(model, selected)
            anchor = _Anchor.build(model, ctx.pretrained, anchor_weight)
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
            bar = tqdm(
                loader, desc=f"{run.key} epoch {epoch}/{spec.epochs}", leave=False, disable=_quiet(ctx)
            )
            for batch, last in _with_last(bar):
                share = plan[micro]
                micro += 1
                sync = micro % spec.grad_accum == 0 or last
                no_sync = (
                    ctx.accelerator.no_sync(wrapped) if (world > 1 and not sync) else contextlib.nullcontext()
                )
                with no_sync:
                    with _autocast(ctx.accelerator):
                        inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                        task_loss, loss = _batch_loss(wrapped, inputs, spec)
                    # the window's mean gradient over its rows, however many rows and batches it has
                    ctx.accelerator.backward(loss * share.weight)
                seen += share.batch_rows
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
                    _check_finite(running, run.key, epoch, step, spec.lr, phase_params)
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
            # also waits for the device's queue; checks the weights so no NaN is validated or saved
            _check_finite(running, run.key, epoch, step, spec.lr, phase_params)
            epoch_seconds = time.perf_counter() - t0  # the training loop only, not the validation pass below
            result.train_seconds += epoch_seconds
            result.train_samples += seen  # rows of the whole batches: every process took its slice
            with _averaged(average):
                logits = predict_logits(model, data.validation, ctx, data.pad_token_id)
            val = summary_metrics(logits, val_labels)
            _check_validation(val, run.key, epoch, spec.lr)
            metrics = {f"val_{k}": v for k, v in val.items()} | {
                "train_loss": running.item() / max(1, micro),
                "anchor": anchor.term(),
                "anchor_weight": anchor_weight,
                "trainable_params": float(result.trainable_params),
                "train_samples_per_s": seen / max(1e-9, epoch_seconds),
            }
            result.history.append({"epoch": float(epoch), **metrics})
            watched = val[spec.early_stopping.metric]
            if _better(spec.early_stopping.metric, watched, best_value):
                best_value, result.best_epoch = watched, epoch
                with _averaged(average):
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
    result.kept_epoch = len(result.history)
    if best_state is not None and result.best_epoch != len(result.history):
        _load_partial(model, best_state)
        result.kept_epoch = result.best_epoch
    elif average is not None:
        average.copy_to_model()
    result.best = _entry(result, result.best_epoch)
    result.kept = _entry(result, result.kept_epoch)
    model.requires_grad_(False)
    model.eval()
    return result


def _entry(result: PhaseResult, epoch: int) -> dict[str, float]:
    return next((h for h in result.history if int(h["epoch"]) == epoch), {})


def _run_on_features(
    model: BituneClassifier, run: PhaseRun, data: PhaseData, ctx: PhaseContext, result: PhaseResult
) -> PhaseResult:
    """The top (pooler if used, head) trained on features encoded once by the frozen backbone."""
    spec = run.spec
    device = ctx.accelerator.device
    selected = trainable_modules(model, spec.train, ctx.groups)
    _require_parameters(selected, run)
    result.trainable_params = freeze_except(model, selected)
    trained = [p for _, module in selected for p in module.parameters()]
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
        _check_finite(total, run.key, epoch, step, spec.lr, trained)
        model.eval()
        with _averaged(average), torch.inference_mode():
            val = summary_metrics(model.top(val_x).float().cpu(), val_y)
        _check_validation(val, run.key, epoch, spec.lr)
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
    result.kept_epoch = len(result.history)
    if spec.early_stopping.patience and best_state is not None:
        _load_partial(model, best_state)
        result.kept_epoch = result.best_epoch
    elif average is not None:
        average.copy_to_model()
    result.train_seconds = time.perf_counter() - train_t0 + encode_seconds
    result.train_samples = len(train_x) * len(result.history)
    result.best = _entry(result, result.best_epoch)
    result.kept = _entry(result, result.kept_epoch)
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
