"""Every bitune strategy against the Hugging Face Trainer baselines a user would write, on SST-2.

Runs the real engine (params presets → BituneClassifier → `run_phase` per scheduled phase), not the
Prefect flow, so the numbers measure the tuning code and nothing else. Model selection uses a
validation set carved out of the training sample; the GLUE dev set is only ever scored, never chosen
on. Wall times are noisy on a shared machine; the ratios are computed within one run.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/strategies.py --data ../shared/data/sst2 --n-train 2000 \
        --out bench/results/strategies-2000.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from bitune.device import make_accelerator, reset_accelerator
from bitune.evaluation.metrics import summary_metrics
from bitune.forgetting import encoder_cka, load_probe_texts, probe_batches
from bitune.model.classifier import BituneClassifier, load_backbone, load_tokenizer
from bitune.model.layer_groups import resolve_layer_groups
from bitune.model.source import resolve_model_source
from bitune.params import Params, load_params
from bitune.tuning.phase import PhaseContext, PhaseData, predict_logits, run_phase
from bitune.tuning.schedule import expand_strategy

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "params" / "default.yaml"
STRATEGIES = sorted(p.stem for p in (ROOT / "params" / "strategies").glob("*.yaml"))
TOP_ONLY = {"head", "pooler"}
Rows = list[dict[str, Any]]

# Targets of issue 3 (see docs/benchmarks.md).
HEAD_MIN_ACC = 0.75
HEAD_MIN_SPEEDUP = 5.0
BIDIR_MIN_GAIN_POINTS = 3.0
FULL_DATA_MIN_DEV_ACC = 0.905  # all of SST-2's training rows (`--n-train 0`)
BOTTOM_MIN_THROUGHPUT_RATIO = 1.3


# --------------------------------------------------------------------------- data


def read_sst2(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """GLUE SST-2 as shipped: tab-separated, no quoting (quotes are literal text)."""
    frames = []
    for name in ("train.tsv", "dev.tsv"):
        frame = pd.read_csv(folder / name, sep="\t", quoting=3)
        frame["sentence"] = frame["sentence"].astype(str).str.strip()
        frames.append(frame[["sentence", "label"]])
    return frames[0], frames[1]


def carve(
    train: pd.DataFrame, n_train: int, val_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sample `n_train` rows (0: all) and split off a validation part for selection/early stopping."""
    sample = train if n_train <= 0 or n_train >= len(train) else train.sample(n=n_train, random_state=seed)
    sample = sample.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    n_val = max(1, int(round(len(sample) * val_fraction)))
    return sample.iloc[n_val:].reset_index(drop=True), sample.iloc[:n_val].reset_index(drop=True)


def tokenize(tokenizer, frame: pd.DataFrame, max_length: int) -> Rows:  # type: ignore[no-untyped-def]
    enc = tokenizer(list(frame["sentence"]), truncation=True, max_length=max_length)
    return [
        {"input_ids": ids, "attention_mask": mask, "labels": int(label)}
        for ids, mask, label in zip(enc["input_ids"], enc["attention_mask"], frame["label"], strict=True)
    ]


def reference_device(device: str) -> str:
    """Where the pretrained reference encoder for CKA runs: beside the tuned one."""
    return "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------- bitune


def bitune_params(
    strategy: str,
    max_length: int,
    overrides: list[str],
    full_epochs: int | None,
    device: str = "cpu",
    precision: str = "auto",
) -> Params:
    """The preset through `load_params`; in full-data mode, backbone phases are capped to `full_epochs`.

    Gradual-unfreezing phases keep their epochs (one per unfreeze stage); head phases on cached
    features keep theirs too (they cost seconds).
    """
    base = [
        f"strategy={strategy}",
        f"preprocess.max_length={max_length}",
        f"train.device={device}",
        f"train.precision={precision}",
        "train.feature_cache_dir=null",
    ]
    params = load_params(PARAMS, base + overrides)
    if full_epochs is None:
        return params
    caps = []
    for section in ("prelude", "phases"):
        for i, spec in enumerate(getattr(params.strategy, section)):
            # gradual unfreezing adds one group per epoch: capping it would leave only the top training
            gradual = spec.unfreeze == "gradual"
            if not set(spec.train) <= TOP_ONLY and not gradual and (spec.epochs or 1) > full_epochs:
                caps.append(f"strategy.{section}.{i}.epochs={full_epochs}")
    return load_params(PARAMS, base + caps + overrides)


def run_bitune(
    strategy: str,
    params: Params,
    splits: dict[str, Rows],
    pad_id: int,
    reference: torch.nn.Module,
    probe: list[dict[str, torch.Tensor]],
) -> dict[str, Any]:
    torch.manual_seed(params.train.seed)
    reset_accelerator()  # a Trainer baseline before may have set another precision
    accelerator = make_accelerator(params.train)
    backbone = load_backbone(params.model)
    pretrained = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    model = BituneClassifier(backbone, 2, params.model.pooling, params.model.dropout)
    ctx = PhaseContext(
        accelerator=accelerator,
        groups=resolve_layer_groups(backbone),
        pretrained=pretrained,
        seed=params.train.seed,
        eval_batch_size=params.train.eval_batch_size,
        compile=params.train.compile,
        bf16_norms=params.train.bf16_norms,
        progress=False,  # per-step bars would bury the results in a benchmark's log
    )
    data = PhaseData(splits["train"], splits["validation"], pad_id)
    scored = [name for name in splits if name not in ("train", "validation")]  # dev, and select if any
    labels = {name: torch.as_tensor([r["labels"] for r in splits[name]]) for name in scored}
    phases, wall = [], 0.0
    for run in expand_strategy(params.strategy):
        t0 = time.perf_counter()
        result = run_phase(model, run, data, ctx)
        seconds = time.perf_counter() - t0
        wall += seconds
        accuracy = {
            f"{name}_acc": summary_metrics(predict_logits(model, splits[name], ctx, pad_id), labels[name])[
                "accuracy"
            ]
            for name in scored
        }
        phases.append(
            {
                "key": run.key,
                "train": run.spec.train,
                "epochs_run": len(result.history),
                "best_epoch": result.best_epoch,
                "kept_epoch": result.kept_epoch,
                # the weights the phase hands on (before 2026-11-26 16:00 this was the best epoch seen)
                "val_acc": result.kept.get("val_accuracy"),
                "best_val_acc": result.best.get("val_accuracy"),
                **accuracy,
                "train_s": seconds,
                "loop_s": result.train_seconds,
                "train_samples_per_s": result.samples_per_second,
                "trainable_params": result.trainable_params,
                "feature_cache": result.used_feature_cache,
            }
        )
    samples = sum(len(splits["train"]) * p["epochs_run"] for p in phases)
    return {
        "kind": "bitune",
        "strategy": params.strategy.model_dump(mode="json"),
        **{f"{name}_acc": phases[-1][f"{name}_acc"] for name in scored},
        "val_acc": phases[-1]["val_acc"],
        "train_s": wall,
        "train_samples_per_s": samples / wall if wall else 0.0,
        "cka_to_pretrained": encoder_cka(model.backbone, reference, probe),
        "phases": phases,
    }


# --------------------------------------------------------------------------- Trainer baselines


def run_trainer(
    kind: str,
    source: str,
    tokenizer,
    splits: dict[str, Rows],
    epochs: int,
    lr: float,
    batch: int,  # type: ignore[no-untyped-def]
    reference: torch.nn.Module,
    probe: list[dict[str, torch.Tensor]],
    workdir: Path,
    seed: int,
    device: str = "cpu",
    precision: str = "auto",
    trainer_precision: str = "auto",
) -> dict[str, Any]:
    """What the tutorial user writes: AutoModelForSequenceClassification + Trainer, dynamic padding.

    `trainer_precision` auto: on CUDA the precision bitune gets (bf16 unless `precision` is fp32), on
    CPU fp32 (TrainingArguments' default); bf16 / fp32 force it, e.g. to give the Trainer the same
    CPU bf16 autocast bitune is run with.
    """
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2, use_safetensors=True)
    if kind == "head_only":
        model.base_model.requires_grad_(False)
    cuda = device != "cpu" and torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(workdir),
        num_train_epochs=epochs,
        learning_rate=lr,
        per_device_train_batch_size=batch,
        warmup_steps=0.1 if kind == "full" else 0.0,
        weight_decay=0.01,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=not cuda,
        bf16=trainer_precision == "bf16" or (trainer_precision == "auto" and cuda and precision != "fp32"),
        seed=seed,
        disable_tqdm=True,
    )
    # a list of tokenized rows is a map-style dataset; the default collator pads each batch
    reset_accelerator()  # the Trainer builds its own Accelerator, maybe in another precision than bitune's
    trainer = Trainer(model=model, args=args, train_dataset=splits["train"], processing_class=tokenizer)
    t0 = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - t0
    model.eval()
    logits = _hf_logits(model, splits["dev"], tokenizer.pad_token_id or 0)
    dev = summary_metrics(logits, torch.as_tensor([r["labels"] for r in splits["dev"]]))
    val = summary_metrics(
        _hf_logits(model, splits["validation"], tokenizer.pad_token_id or 0),
        torch.as_tensor([r["labels"] for r in splits["validation"]]),
    )
    return {
        "kind": "trainer",
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch,
        "dev_acc": dev["accuracy"],
        "val_acc": val["accuracy"],
        "train_s": seconds,
        "train_samples_per_s": len(splits["train"]) * epochs / seconds,
        "trainer_runtime_s": out.metrics.get("train_runtime"),
        "cka_to_pretrained": encoder_cka(model.base_model, reference, probe),
    }


@torch.inference_mode()
def _hf_logits(model, rows: Rows, pad_id: int, batch: int = 128) -> torch.Tensor:  # type: ignore[no-untyped-def]
    from bitune.tuning.batching import length_grouped_batches, pad_batch

    out = torch.empty(len(rows), 2)
    device = next(model.parameters()).device
    for ids in length_grouped_batches([len(r["input_ids"]) for r in rows], batch, 0, shuffle=False):
        padded = pad_batch([rows[i] for i in ids], pad_id)
        out[ids] = (
            model(
                input_ids=padded["input_ids"].to(device), attention_mask=padded["attention_mask"].to(device)
            )
            .logits.float()
            .cpu()
        )
    return out


# --------------------------------------------------------------------------- targets and report


def _accuracy(record: dict[str, Any], key: str) -> str:
    """'80.8%', or '80.8% ± 0.6' (standard deviation over training seeds, in points) for a mean."""
    value, sd = record.get(key), record.get(f"{key}_sd")
    if value is None:
        return "-"
    return f"{value:.1%}" + (f" ± {100 * sd:.1f}" if sd is not None else "")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


MEANED = ("dev_acc", "val_acc", "train_s", "loop_s", "train_samples_per_s", "cka_to_pretrained")


def seed_mean(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One job over several training seeds: the first seed's record with its numbers replaced by
    means over the seeds (phases too), plus each seed's numbers and the standard deviations.
    A failed seed makes the job a failure: a mean over the seeds that happened to work would flatter it.
    """
    failed = next((r for r in runs if "error" in r), None)
    if failed is not None or len(runs) == 1:
        return {k: v for k, v in (failed or runs[0]).items() if k != "seed"}

    def mean_of(records: list[dict[str, Any]]) -> dict[str, Any]:
        merged = dict(records[0])
        for key in MEANED:
            values = [r.get(key) for r in records]
            if all(isinstance(v, int | float) for v in values):
                merged[key] = statistics.fmean(values)  # type: ignore[arg-type]
        return merged

    merged = mean_of(runs)
    merged.pop("seed", None)
    if "phases" in runs[0]:
        merged["phases"] = [mean_of(list(ps)) for ps in zip(*(r["phases"] for r in runs), strict=True)]
    merged["train_seeds"] = [r["seed"] for r in runs]
    merged["dev_acc_sd"] = statistics.stdev(r["dev_acc"] for r in runs)
    merged["val_acc_sd"] = statistics.stdev(r["val_acc"] for r in runs)
    merged["by_seed"] = [{"seed": r["seed"], **{k: r.get(k) for k in MEANED if k != "loop_s"}} for r in runs]
    return merged


def evaluate_targets(results: dict[str, dict[str, Any]], full_data: bool = False) -> dict[str, Any]:
    """Each target: the measured numbers, and pass/fail (None when an input failed or was not run).
    With `full_data` (all training rows) `bidirectional` is held to the full-data target instead."""
    ok = {k: v for k, v in results.items() if "error" not in v}
    hf_full, hf_head = ok.get("trainer_full"), ok.get("trainer_head_only")
    head, bidir, full = ok.get("head_only"), ok.get("bidirectional"), ok.get("full")
    targets: dict[str, Any] = {}

    speed = _ratio(hf_head["train_s"], head["train_s"]) if head and hf_head else None
    targets["head_phase"] = {
        "dev_acc": head and head["dev_acc"],
        "speedup_vs_trainer_head_only": speed,
        "passed": None
        if head is None or speed is None
        else head["dev_acc"] >= HEAD_MIN_ACC and speed >= HEAD_MIN_SPEEDUP,
        "target": f"dev acc >= {HEAD_MIN_ACC:.0%} and >= {HEAD_MIN_SPEEDUP:g}x faster than Trainer head-only",
    }
    if full_data:
        targets["bidirectional"] = _full_data_target(bidir, hf_full)
    elif bidir and hf_full:
        gain = 100 * (bidir["dev_acc"] - hf_full["dev_acc"])
        time_ratio = bidir["train_s"] / hf_full["train_s"]
        cka_ok = full is not None and bidir["cka_to_pretrained"] > full["cka_to_pretrained"]
        seeds = len(bidir.get("train_seeds", [])) if "dev_acc_sd" in hf_full else 0
        targets["bidirectional"] = {
            "dev_gain_points_vs_trainer_full": gain,
            **(
                {  # standard error of the difference of two means over `seeds` training seeds
                    "dev_gain_se_points": 100
                    * math.sqrt((bidir["dev_acc_sd"] ** 2 + hf_full["dev_acc_sd"] ** 2) / seeds),
                    "train_seeds": seeds,
                }
                if seeds > 1 and "dev_acc_sd" in bidir
                else {}
            ),
            "time_ratio_vs_trainer_full": time_ratio,
            "cka": bidir["cka_to_pretrained"],
            "cka_full": full and full["cka_to_pretrained"],
            "passed": gain >= BIDIR_MIN_GAIN_POINTS and time_ratio <= 1.0 and cka_ok,
            "parts": {"accuracy": gain >= BIDIR_MIN_GAIN_POINTS, "time": time_ratio <= 1.0, "cka": cka_ok},
        }
    else:
        targets["bidirectional"] = {"passed": None}
    if not full_data:
        targets["bidirectional"]["target"] = (
            f"dev acc >= Trainer full FT + {BIDIR_MIN_GAIN_POINTS:g} points, "
            "wall time <= Trainer full FT, CKA > full"
        )
    bottom = next((p for p in bidir["phases"] if not p["feature_cache"]), None) if bidir else None
    ratio = (
        _ratio(bottom["train_samples_per_s"], hf_full["train_samples_per_s"]) if bottom and hf_full else None
    )
    targets["bottom_throughput"] = {
        "bottom_samples_per_s": bottom and bottom["train_samples_per_s"],
        "trainer_full_samples_per_s": hf_full and hf_full["train_samples_per_s"],
        "ratio": ratio,
        "passed": None if ratio is None else ratio >= BOTTOM_MIN_THROUGHPUT_RATIO,
        "target": f"bottom-phase samples/s >= {BOTTOM_MIN_THROUGHPUT_RATIO:g}x Trainer full FT",
    }
    return targets


def _full_data_target(bidir: dict[str, Any] | None, hf_full: dict[str, Any] | None) -> dict[str, Any]:
    """Issue 3's full-data target: an absolute dev accuracy, in no more time than the Trainer."""
    target = f"dev acc >= {FULL_DATA_MIN_DEV_ACC:.1%} in wall time <= Trainer full FT"
    if not (bidir and hf_full):
        return {"passed": None, "target": target}
    accuracy = bidir["dev_acc"] >= FULL_DATA_MIN_DEV_ACC
    time_ratio = bidir["train_s"] / hf_full["train_s"]
    return {
        "dev_acc": bidir["dev_acc"],
        "trainer_full_dev_acc": hf_full["dev_acc"],
        "time_ratio_vs_trainer_full": time_ratio,
        "passed": accuracy and time_ratio <= 1.0,
        "parts": {"accuracy": accuracy, "time": time_ratio <= 1.0},
        "target": target,
    }


def print_table(results: dict[str, dict[str, Any]], targets: dict[str, Any], console: Console) -> None:
    hf_full, hf_head = results.get("trainer_full", {}), results.get("trainer_head_only", {})
    table = Table(title="SST-2 dev accuracy, training time and forgetting")
    for col in (
        "run",
        "dev acc",
        "val acc",
        "train s",
        "samples/s",
        "CKA",
        "× time vs HF full",
        "× time vs HF head",
    ):
        table.add_column(col, justify="left" if col == "run" else "right")

    def fmt(value: float | None, spec: str) -> str:
        return (
            "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)
        )

    for name, res in results.items():
        if "error" in res:
            table.add_row(name, f"[red]error: {res['error'][:60]}[/red]", *[""] * 6)
            continue
        rows = [(name, res)]
        rows += [(f"  └ {p['key']}", {**p, "cka_to_pretrained": None}) for p in res.get("phases", [])]
        for label, r in rows:
            table.add_row(
                label,
                _accuracy(r, "dev_acc"),
                _accuracy(r, "val_acc"),
                fmt(r["train_s"], ".1f"),
                fmt(r["train_samples_per_s"], ".1f"),
                fmt(r.get("cka_to_pretrained"), ".3f"),
                fmt(_ratio(r["train_s"], hf_full.get("train_s")), ".2f"),
                fmt(_ratio(r["train_s"], hf_head.get("train_s")), ".2f"),
            )
    console.print(table)
    for name, target in targets.items():
        mark = {True: "[green]PASS[/green]", False: "[red]FAIL[/red]", None: "[yellow]n/a[/yellow]"}[
            target["passed"]
        ]
        detail = {
            k: (round(v, 3) if isinstance(v, float) else v)
            for k, v in target.items()
            if k not in ("passed", "target")
        }
        console.print(f"{mark} {name}: {target['target']} — {detail}")


def markdown_report(report: dict[str, Any]) -> str:
    """The results table and target verdicts as Markdown, for docs/benchmarks.md."""
    results = report["results"]
    full, head = results.get("trainer_full", {}), results.get("trainer_head_only", {})

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    lines = [
        "| run | dev acc | val acc | train s | samples/s | CKA | × time vs HF full | × time vs HF head |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, res in results.items():
        if "error" in res:
            lines.append(f"| {name} | error: {res['error'][:80]} | | | | | | |")
            continue
        rows = [(name, res)] + [(f"↳ {p['key']} ({p['epochs_run']} ep)", p) for p in res.get("phases", [])]
        for label, r in rows:
            lines.append(
                f"| {label} | {_accuracy(r, 'dev_acc')} | {_accuracy(r, 'val_acc')} | "
                f"{fmt(r['train_s'], '.1f')} | {fmt(r['train_samples_per_s'], '.1f')} | "
                f"{fmt(r.get('cka_to_pretrained'), '.4f')} | "
                f"{fmt(_ratio(r['train_s'], full.get('train_s')), '.2f')} | "
                f"{fmt(_ratio(r['train_s'], head.get('train_s')), '.2f')} |"
            )
    lines.append("")
    for name, target in report["targets"].items():
        mark = {True: "**met**", False: "**missed**", None: "not evaluated"}[target["passed"]]
        detail = ", ".join(
            f"{k}={round(v, 3) if isinstance(v, float) else v}"
            for k, v in target.items()
            if k not in ("passed", "target")
        )
        lines.append(f"- {name}: {target['target']} — {mark} ({detail})")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    def sh(cmd: str) -> str:
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    import transformers

    return {
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "lscpu": sh("lscpu | head -n 15"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "git_sha": sh(f"git -C {ROOT} rev-parse --short HEAD") or None,
    }


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="folder with SST-2 train.tsv and dev.tsv")
    parser.add_argument("--n-train", type=int, default=2000, help="training rows sampled with --seed; 0: all")
    parser.add_argument("--out", type=Path, help="JSON file to write")
    parser.add_argument("--render", type=Path, help="print an earlier run's JSON as Markdown and exit")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma list of presets")
    parser.add_argument(
        "--baselines", default="full,head_only", help="Trainer baselines: full,head_only or none"
    )
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument(
        "--val-fraction", type=float, default=0.1, help="of the training sample, for selection"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--train-seeds",
        default=None,
        help="comma list of training seeds (init, dropout, batch order) run for every job on the same "
        "--seed sample; results are means with their standard deviation (default: --seed alone)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu", help="train.device")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="train.precision (auto: bf16 on CUDA)",
    )
    parser.add_argument(
        "--trainer-precision",
        choices=("auto", "fp32", "bf16"),
        default="auto",
        help="Trainer baselines (auto: bitune's on CUDA, fp32 on CPU as TrainingArguments defaults)",
    )
    parser.add_argument(
        "--probe", type=Path, default=None, help="general-English text (default: ../wikitext2)"
    )
    parser.add_argument("--probe-rows", type=int, default=256)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        help="params override for every bitune strategy, e.g. strategy.phases.1.lr=1e-4",
    )
    parser.add_argument(
        "--full-epochs",
        type=int,
        default=1,
        help="with --n-train 0: epochs of the Trainer baselines (and cap of bitune backbone phases)",
    )
    parser.add_argument(
        "--bitune-epoch-cap",
        type=int,
        default=None,
        help="with --n-train 0: cap of bitune backbone phases' epochs (default: --full-epochs)",
    )
    parser.add_argument("--model", default=None, help="model.name_or_path (default: params/default.yaml's)")
    args = parser.parse_args(argv)
    if args.render:
        print(markdown_report(json.loads(args.render.read_text())))
        return 0
    if args.data is None or args.out is None:
        parser.error("--data and --out are required (unless --render)")

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    console = Console()
    full_mode = args.n_train <= 0
    probe_file = args.probe or args.data.parent / "wikitext2" / "wiki.test.tokens"

    model_override = [f"model.name_or_path={args.model}"] if args.model else []
    overrides = [*model_override, *args.overrides]
    epoch_cap = args.bitune_epoch_cap or args.full_epochs
    base = load_params(PARAMS, [f"preprocess.max_length={args.max_length}", *model_override])
    tokenizer = load_tokenizer(base.model)
    train_df, dev_df = read_sst2(args.data)
    train_part, val_part = carve(train_df, args.n_train, args.val_fraction, args.seed)
    splits = {
        "train": tokenize(tokenizer, train_part, args.max_length),
        "validation": tokenize(tokenizer, val_part, args.max_length),
        "dev": tokenize(tokenizer, dev_df, args.max_length),
    }
    pad_id = tokenizer.pad_token_id or 0
    probe = probe_batches(tokenizer, load_probe_texts(str(probe_file), args.probe_rows), args.max_length)
    reference = load_backbone(base.model).eval().to(reference_device(args.device))
    console.print(
        f"train {len(splits['train'])}, validation {len(splits['validation'])} (carved from the "
        f"training sample), dev {len(splits['dev'])}; torch threads {torch.get_num_threads()}"
    )

    results: dict[str, dict[str, Any]] = {}
    by_seed: dict[str, list[dict[str, Any]]] = {}
    trainer_epochs = args.full_epochs if full_mode else 3
    baselines = [] if args.baselines == "none" else args.baselines.split(",")
    jobs: list[tuple[str, Any]] = [(f"trainer_{b}", b) for b in baselines]
    jobs += [(s, s) for s in args.strategies.split(",") if s]
    workdir = ROOT / ".bitune" / "bench-trainer"
    train_seeds = [int(x) for x in args.train_seeds.split(",")] if args.train_seeds else [args.seed]
    for (name, what), seed in itertools.product(jobs, train_seeds):
        console.print(f"[bold]running {name}[/bold] (training seed {seed})")
        t0 = time.perf_counter()
        try:
            if name.startswith("trainer_"):
                lr = 5e-5 if what == "full" else 1e-3
                result = run_trainer(
                    what,
                    resolve_model_source(base.model.name_or_path),
                    tokenizer,
                    splits,
                    trainer_epochs,
                    lr,
                    32,
                    reference,
                    probe,
                    workdir,
                    seed,
                    args.device,
                    args.precision,
                    args.trainer_precision,
                )
            else:
                params = bitune_params(
                    what,
                    args.max_length,
                    [*overrides, f"train.seed={seed}"],
                    epoch_cap if full_mode else None,
                    args.device,
                    args.precision,
                )
                result = run_bitune(what, params, splits, pad_id, reference, probe)
                torch.set_num_threads(args.threads)
        except Exception as exc:  # noqa: BLE001 - a benchmark records the failure and goes on
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            console.print(f"[red]{name} failed: {type(exc).__name__}: {exc}[/red]")
        by_seed.setdefault(name, []).append({"seed": seed, **result})
        results[name] = seed_mean(by_seed[name])
        console.print(f"  done in {time.perf_counter() - t0:.0f} s")
        write_report(
            args, results, train_part, val_part, splits, base, trainer_epochs, probe_file, final=False
        )

    print_table(results, evaluate_targets(results, full_data=full_mode), console)
    write_report(args, results, train_part, val_part, splits, base, trainer_epochs, probe_file, final=True)
    console.print(f"wrote {args.out}")
    return 0


def write_report(  # type: ignore[no-untyped-def]
    args, results, train_part, val_part, splits, base, trainer_epochs, probe_file, final: bool
) -> None:
    """Written after every run too (`complete: false`), so a killed benchmark still leaves its numbers."""
    report = {
        "complete": final,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": {
            "n_train_sample": len(train_part) + len(val_part),
            "train_rows": len(splits["train"]),
            "validation_rows": len(splits["validation"]),
            "dev_rows": len(splits["dev"]),
            "max_length": args.max_length,
            "seed": args.seed,
            "train_seeds": args.train_seeds,
            "model": base.model.name_or_path,
            "overrides": args.overrides,
            "trainer_epochs": trainer_epochs,
            "bitune_epoch_cap": (args.bitune_epoch_cap or args.full_epochs) if args.n_train <= 0 else None,
            "device": args.device,
            "precision": args.precision,
            "trainer_precision": args.trainer_precision,
            "probe_file": str(probe_file),
            "probe_rows": args.probe_rows,
        },
        "environment": environment(),
        "results": results,
        "targets": evaluate_targets(results, full_data=args.n_train <= 0),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    sys.exit(main())
