"""Choose a strategy's settings on held-out training rows, never on the dev set.

Each variant is a list of `--set` overrides applied to one preset (default `bidirectional`) and run
through the same engine as `strategies.py`. Variants are ranked by accuracy on a *selection set*:
SST-2 training rows outside the benchmark's sample (sentences of the sample removed), so choosing a
preset never looks at dev. Dev accuracy is recorded for the report only. After the grid, the best
`--confirm` variants are rerun with other seeds, and the winner is the best mean selection accuracy.

With `--n-train 0` (all of SST-2's training rows) no unseen training rows are left, so the selection
set is the carved validation split, the one early stopping also watches: a slightly optimistic
ranking, declared in the report, and still never dev.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/sweep.py --data ../shared/data/sst2 --grid bottom \
        --out bench/results/sweep.json
    python3 bench/sweep.py --data ../shared/data/sst2 --n-train 0 --grid full-data --device cuda \
        --precision bf16 --confirm 0 --out /tmp/sweep-full.json   # minutes on a GPU, hours on a CPU
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table
from strategies import (
    PARAMS,
    bitune_params,
    carve,
    environment,
    read_sst2,
    reference_device,
    run_bitune,
    tokenize,
)

from bitune.forgetting import load_probe_texts, probe_batches
from bitune.model.classifier import load_backbone, load_tokenizer
from bitune.params import load_params

BOTTOM = "strategy.phases.1"


# The bottom phase as the preset had it at noon on 2026-11-26 (λ left to each grid), and in the
# afternoon (λ 0.001), spelled out so that grids built on them do not move with the preset.
NOON_BOTTOM = [
    f"{BOTTOM}.train=[embeddings, 'layers[0:4]', head, pooler]",
    f"{BOTTOM}.lr=1.5e-4",
    f"{BOTTOM}.epochs=6",
]
AFTERNOON_BOTTOM = [*NOON_BOTTOM, f"{BOTTOM}.anchor=0.001"]


def bottom_grid() -> dict[str, list[str]]:
    """The bottom phase of `bidirectional`: which layers, lr, epochs, anchor; plus two rounds."""
    grid: dict[str, list[str]] = {}
    layer_sets = {
        "l0-4": "[embeddings, 'layers[0:4]', head, pooler]",
        "l0-6": "[embeddings, 'layers[0:6]', head, pooler]",
    }
    for (layers, train), lr, epochs, anchor in itertools.product(
        layer_sets.items(), (8e-5, 1.5e-4, 3e-4), (4, 6), (0.01, 1.0)
    ):
        grid[f"{layers} lr{lr:g} ep{epochs} a{anchor:g}"] = [
            f"{BOTTOM}.train={train}",
            f"{BOTTOM}.lr={lr}",
            f"{BOTTOM}.epochs={epochs}",
            f"{BOTTOM}.anchor={anchor}",
        ]
    for layers, train in layer_sets.items():
        grid[f"{layers} lr1.5e-4 ep3 a0.01 R2"] = [
            f"{BOTTOM}.train={train}",
            f"{BOTTOM}.lr=1.5e-4",
            f"{BOTTOM}.epochs=3",
            "strategy.rounds=2",
        ]
    # a fixed shuffle, so a --budget-s cut leaves a spread of the grid rather than one corner
    names = list(grid)
    random.Random(0).shuffle(names)
    return {name: grid[name] for name in names}


def full_data_grid() -> dict[str, list[str]]:
    """All 60k rows: how hard to anchor (λ fixed or scaled with data), which layers, lr, epochs."""
    grid: dict[str, list[str]] = {}
    layer_sets = {
        "l0-4": "[embeddings, 'layers[0:4]', head, pooler]",
        "l0-6": "[embeddings, 'layers[0:6]', head, pooler]",
    }
    anchors = {  # λ spelled out, so the grid does not move with the preset
        "a-scaled": [f"{BOTTOM}.anchor=0.01", f"{BOTTOM}.anchor_rows=1800"],
        "a0.01-fixed": [f"{BOTTOM}.anchor=0.01", f"{BOTTOM}.anchor_rows=null"],
        "a0": [f"{BOTTOM}.anchor=0"],
    }
    for (layers, train), (anchor, sets), lr, epochs in itertools.product(
        layer_sets.items(), anchors.items(), (5e-5, 8e-5), (1, 2)
    ):
        grid[f"{layers} {anchor} lr{lr:g} ep{epochs}"] = [
            f"{BOTTOM}.train={train}",
            f"{BOTTOM}.lr={lr}",
            f"{BOTTOM}.epochs={epochs}",
            *sets,
        ]
    names = list(grid)
    random.Random(0).shuffle(names)
    return {name: grid[name] for name in names}


def depth_grid() -> dict[str, list[str]]:
    """How deep the bottom phase reaches at the sweep's best lr and length, against the preset of
    2026-11-25 (lr 8e-5, 4 epochs), spelled out so the grid does not move with the preset."""
    anchor = f"{BOTTOM}.anchor=0.01"
    grid: dict[str, list[str]] = {"l0-4 lr8e-5 ep4": [f"{BOTTOM}.lr=8e-5", f"{BOTTOM}.epochs=4", anchor]}
    for top in (4, 5, 6):
        grid[f"l0-{top} lr1.5e-4 ep6"] = [
            f"{BOTTOM}.train=[embeddings, 'layers[0:{top}]', head, pooler]",
            f"{BOTTOM}.lr=1.5e-4",
            f"{BOTTOM}.epochs=6",
            anchor,
        ]
    return grid


def averaging_grid() -> dict[str, list[str]]:
    """Weight averaging (EMA) of the bottom phase, on the preset and on the sweep's top variant."""
    bases = {
        # the preset of 2026-11-25, spelled out
        "preset": [f"{BOTTOM}.lr=8e-5", f"{BOTTOM}.epochs=4", f"{BOTTOM}.anchor=0.01"],
        "l0-6 lr1.5e-4 ep6": [
            f"{BOTTOM}.train=[embeddings, 'layers[0:6]', head, pooler]",
            f"{BOTTOM}.lr=1.5e-4",
            f"{BOTTOM}.epochs=6",
            f"{BOTTOM}.anchor=0.01",
        ],
    }
    grid: dict[str, list[str]] = {}
    for (base, sets), ema in itertools.product(bases.items(), (None, 0.98, 0.99, 0.995)):
        grid[f"{base} ema{ema or 'off'}"] = [*sets, *([f"{BOTTOM}.ema={ema}"] if ema else [])]
    return grid


def regularisation_grid() -> dict[str, list[str]]:
    """Knobs of few-sample fine-tuning the earlier grids left alone, each against the preset of
    2026-11-26 morning (embeddings + layers[0:4], lr 1.5e-4, 6 epochs, λ 0.01), spelled out."""
    preset = [
        f"{BOTTOM}.train=[embeddings, 'layers[0:4]', head, pooler]",
        f"{BOTTOM}.lr=1.5e-4",
        f"{BOTTOM}.epochs=6",
        f"{BOTTOM}.anchor=0.01",
    ]
    changes = {
        "preset": [],
        "batch 16": [f"{BOTTOM}.batch_size=16"],
        "no embeddings": [f"{BOTTOM}.train=['layers[0:4]', head, pooler]"],
        "head dropout 0.3": ["model.dropout=0.3"],
        "anchor 0.1": [f"{BOTTOM}.anchor=0.1"],
        "anchor 0": [f"{BOTTOM}.anchor=0"],
        "weight decay 0": [f"{BOTTOM}.weight_decay=0"],
    }
    return {name: [*preset, *sets] for name, sets in changes.items()}


def anchor_grid() -> dict[str, list[str]]:
    """How strong the pretrained-weights anchor λ should be at 1,800 rows, on the preset of
    2026-11-26 (embeddings + layers[0:4], lr 1.5e-4, 6 epochs), spelled out."""
    preset = NOON_BOTTOM
    anchors = (0.01, 0.003, 0.001, 0)
    return {f"anchor {anchor:g}": [*preset, f"{BOTTOM}.anchor={anchor}"] for anchor in anchors}


def decoupled_anchor_grid() -> dict[str, list[str]]:
    """The anchor outside Adam (`anchor_mode: decoupled`), where λ is the loss's own λ: over the
    bottom phase's ~340 steps the pull adds up to about 0.05·λ e-folds toward θ_pre. Against the
    gradient anchor of the preset of 2026-11-26 noon (λ 0.001), spelled out."""
    preset = NOON_BOTTOM
    grid = {"gradient 0.001": [*preset, f"{BOTTOM}.anchor=0.001", f"{BOTTOM}.anchor_mode=gradient"]}
    for anchor in (1, 3, 10, 30):
        grid[f"decoupled {anchor}"] = [
            *preset,
            f"{BOTTOM}.anchor={anchor}",
            f"{BOTTOM}.anchor_mode=decoupled",
        ]
    return grid


def contrastive_grid() -> dict[str, list[str]]:
    """A supervised contrastive term on the pooled features (`contrastive`, τ) added to the bottom
    phase's cross-entropy, on the preset of 2026-11-26 afternoon (λ 0.001), spelled out."""
    preset = AFTERNOON_BOTTOM
    grid = {"preset": [*preset, f"{BOTTOM}.contrastive=0"]}
    for weight, temperature in ((0.1, 0.1), (0.3, 0.1), (1.0, 0.1), (1.0, 0.3), (3.0, 0.3)):
        grid[f"contrastive {weight:g} tau {temperature:g}"] = [
            *preset,
            f"{BOTTOM}.contrastive={weight}",
            f"{BOTTOM}.contrastive_temperature={temperature}",
        ]
    return grid


def label_smoothing_grid() -> dict[str, list[str]]:
    """Label smoothing ε on both phases' cross-entropy (the Trainer's `label_smoothing_factor`), on
    the preset of 2026-11-26 afternoon (λ 0.001), spelled out."""
    preset = AFTERNOON_BOTTOM
    return {
        f"label smoothing {eps:g}": [
            *preset,
            f"strategy.phases.0.label_smoothing={eps}",
            f"{BOTTOM}.label_smoothing={eps}",
        ]
        for eps in (0.0, 0.1, 0.2)
    }


def selection_check_grid() -> dict[str, list[str]]:
    """Variants that the phrase selection set ranked level with the preset but dev did not (deeper
    bottom phase, contrastive term): rerun with `--select-min-words` to see whether a
    sentence-length selection set ranks them as dev does. The preset of 2026-11-26 afternoon, spelled out."""
    preset = AFTERNOON_BOTTOM
    return {
        "preset": preset,
        "l0-6": [*preset, f"{BOTTOM}.train=[embeddings, 'layers[0:6]', head, pooler]"],
        "contrastive 0.3 tau 0.1": [
            *preset,
            f"{BOTTOM}.contrastive=0.3",
            f"{BOTTOM}.contrastive_temperature=0.1",
        ],
        "contrastive 1 tau 0.3": [
            *preset,
            f"{BOTTOM}.contrastive=1.0",
            f"{BOTTOM}.contrastive_temperature=0.3",
        ],
    }


def batch_grid() -> dict[str, list[str]]:
    """Bottom-phase batch size at 2,000 rows. On full SST-2 a batch of 64 trained 1.29× the samples/s
    of 32 on an AMX CPU for the same validation accuracy; does the small-data regime pay for it?
    lr as is, and scaled by √2 for the doubled batch."""
    return {
        "batch 32 (preset)": AFTERNOON_BOTTOM,
        "batch 64": [*AFTERNOON_BOTTOM, f"{BOTTOM}.batch_size=64"],
        "batch 64 lr 2.1e-4": [*AFTERNOON_BOTTOM, f"{BOTTOM}.batch_size=64", f"{BOTTOM}.lr=2.1e-4"],
    }


def lr_shape_grid() -> dict[str, list[str]]:
    """How the bottom phase's lr is spread: layer-wise decay (lr × decay^depth from the top, so the
    lower layers and embeddings move least; a higher base lr keeps the top trained layers' rate),
    a cosine schedule, and a deeper reach protected by decay. The preset of 2026-11-26 afternoon."""
    preset = AFTERNOON_BOTTOM
    return {
        "preset": preset,
        "llrd 0.9 lr 2e-4": [*preset, f"{BOTTOM}.layer_lr_decay=0.9", f"{BOTTOM}.lr=2e-4"],
        "llrd 0.85 lr 3e-4": [*preset, f"{BOTTOM}.layer_lr_decay=0.85", f"{BOTTOM}.lr=3e-4"],
        "llrd 0.8 lr 4e-4": [*preset, f"{BOTTOM}.layer_lr_decay=0.8", f"{BOTTOM}.lr=4e-4"],
        "cosine": [*preset, f"{BOTTOM}.schedule=cosine"],
        "l0-6 llrd 0.8 lr 2.5e-4": [
            *preset,
            f"{BOTTOM}.train=[embeddings, 'layers[0:6]', head, pooler]",
            f"{BOTTOM}.layer_lr_decay=0.8",
            f"{BOTTOM}.lr=2.5e-4",
        ],
    }


def rounds_grid() -> dict[str, list[str]]:
    """The method's R rounds at the afternoon preset: head → bottom twice, each bottom phase half as
    long (the same bottom-phase time in all), at the preset's lr and a hotter one. The second head
    phase trains on features of the encoder the first bottom phase tuned."""
    preset = AFTERNOON_BOTTOM
    return {
        "preset (R1)": preset,
        "R2 bottom 3 ep": [*preset, "strategy.rounds=2", f"{BOTTOM}.epochs=3"],
        "R2 bottom 3 ep lr 2.5e-4": [
            *preset,
            "strategy.rounds=2",
            f"{BOTTOM}.epochs=3",
            f"{BOTTOM}.lr=2.5e-4",
        ],
    }


def head_grid() -> dict[str, list[str]]:
    """How far the head phase fits before the bottom phase starts. Two rounds lost because the second
    head phase fits the training rows almost perfectly and leaves the bottom phase little gradient;
    does the first one do the same? Shorter, slower and decayed head phases, on the afternoon preset."""
    head = "strategy.phases.0"
    preset = AFTERNOON_BOTTOM
    return {
        "preset (head 30 ep at 3e-3)": preset,
        "head 3 ep": [*preset, f"{head}.epochs=3"],
        "head 10 ep": [*preset, f"{head}.epochs=10"],
        "head 30 ep at 1e-3": [*preset, f"{head}.lr=1e-3"],
        "head 30 ep wd 0.1": [*preset, f"{head}.weight_decay=0.1"],
    }


GRIDS = {
    "head": head_grid,
    "rounds": rounds_grid,
    "anchor": anchor_grid,
    "averaging": averaging_grid,
    "bottom": bottom_grid,
    "depth": depth_grid,
    "full-data": full_data_grid,
    "regularisation": regularisation_grid,
    "current": lambda: {"current preset": []},
    "decoupled-anchor": decoupled_anchor_grid,
    "contrastive": contrastive_grid,
    "label-smoothing": label_smoothing_grid,
    "selection-check": selection_check_grid,
    "batch": batch_grid,
    "lr-shape": lr_shape_grid,
}


def selection_rows(
    train: pd.DataFrame, sample: pd.DataFrame, n: int, seed: int, min_words: int = 0
) -> pd.DataFrame:
    """`n` training rows whose sentence is not in the benchmark sample: the held-out selection set.
    `min_words` keeps only rows of at least that many words: SST-2's training rows are mostly short
    phrases (median 7 words), its dev rows whole sentences (median 19), so a sentence-length
    selection set stands in for the task without looking at dev."""
    unseen = train[~train["sentence"].isin(set(sample["sentence"]))]
    unseen = unseen[unseen["sentence"].str.split().str.len() >= min_words]
    return unseen.sample(n=min(n, len(unseen)), random_state=seed + 1).reset_index(drop=True)


def run_variant(
    name: str, overrides: list[str], seed: int, args: argparse.Namespace, context: dict[str, Any]
) -> dict[str, Any]:
    params = bitune_params(
        args.strategy,
        args.max_length,
        [*overrides, f"train.seed={seed}"],
        None,
        args.device,
        args.precision,
    )
    try:
        result = run_bitune(
            args.strategy,
            params,
            context["splits"],
            context["pad_id"],
            context["reference"],
            context["probe"],
        )
    except Exception as exc:  # noqa: BLE001 - a sweep records the failure and goes on
        return {
            "variant": name,
            "seed": seed,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    return {"variant": name, "seed": seed, "overrides": overrides, **result}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with SST-2 train.tsv and dev.tsv")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--strategy", default="bidirectional")
    parser.add_argument("--grid", choices=sorted(GRIDS), default="bottom")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--select-rows", type=int, default=2000, help="held-out training rows to rank on")
    parser.add_argument(
        "--select-min-words", type=int, default=0, help="rank on held-out rows of at least this many words"
    )
    parser.add_argument("--confirm", type=int, default=3, help="best variants rerun with more seeds")
    parser.add_argument("--confirm-seeds", default="1,2")
    parser.add_argument(
        "--budget-s", type=float, default=0, help="stop starting variants after this; 0: none"
    )
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="fp32")
    parser.add_argument("--model", default=None, help="model.name_or_path (default: params/default.yaml's)")
    parser.add_argument("--probe-rows", type=int, default=256)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    console = Console()
    started = time.perf_counter()
    model_override = [f"model.name_or_path={args.model}"] if args.model else []
    base = load_params(PARAMS, [f"preprocess.max_length={args.max_length}", *model_override])
    tokenizer = load_tokenizer(base.model)
    train_df, dev_df = read_sst2(args.data)
    train_part, val_part = carve(train_df, args.n_train, args.val_fraction, args.seed)
    full_data = args.n_train <= 0
    select_df = (
        val_part
        if full_data
        else selection_rows(
            train_df, pd.concat([train_part, val_part]), args.select_rows, args.seed, args.select_min_words
        )
    )
    splits = {
        "train": tokenize(tokenizer, train_part, args.max_length),
        "validation": tokenize(tokenizer, val_part, args.max_length),
        "select": tokenize(tokenizer, select_df, args.max_length),
        "dev": tokenize(tokenizer, dev_df, args.max_length),
    }
    probe_file = args.data.parent / "wikitext2" / "wiki.test.tokens"
    context = {
        "splits": splits,
        "pad_id": tokenizer.pad_token_id or 0,
        "probe": probe_batches(
            tokenizer, load_probe_texts(str(probe_file), args.probe_rows), args.max_length
        ),
        "reference": load_backbone(base.model).eval().to(reference_device(args.device)),
    }
    grid = {name: [*model_override, *sets] for name, sets in GRIDS[args.grid]().items()}
    console.print(
        f"{len(grid)} variants of {args.strategy}; train {len(splits['train'])}, validation "
        f"{len(splits['validation'])}, selection {len(splits['select'])} "
        f"({'the carved validation rows' if full_data else 'held-out train rows'}), dev "
        f"{len(splits['dev'])} (reported, never ranked on)"
    )

    runs: list[dict[str, Any]] = []

    def save(final: bool) -> dict[str, Any]:
        ranked = rank(runs)
        report = {
            "complete": final,
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "config": {
                **{k: str(v) for k, v in vars(args).items()},
                "grid_size": len(grid),
                "selection_set": "carved validation rows"
                if full_data
                else f"held-out training rows of at least {args.select_min_words} words",
            },
            "environment": environment(),
            "ranking": ranked,
            "runs": runs,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=float))
        return report

    def out_of_time() -> bool:
        return bool(args.budget_s) and time.perf_counter() - started > args.budget_s

    for name, overrides in grid.items():
        if out_of_time():
            console.print(f"[yellow]budget spent: {name} and later variants not run[/yellow]")
            break
        runs.append(run_variant(name, overrides, args.seed, args, context))
        last = runs[-1]
        console.print(
            f"{name}: "
            + (
                last.get("error")
                or f"select {last['select_acc']:.3f} val {last['val_acc']:.3f} {last['train_s']:.0f}s"
            )
        )
        save(final=False)
    for entry in rank(runs)[: args.confirm]:
        for seed in (int(s) for s in args.confirm_seeds.split(",") if s):
            if out_of_time():
                break
            runs.append(run_variant(entry["variant"], grid[entry["variant"]], seed, args, context))
            save(final=False)
    report = save(final=True)
    print_ranking(report["ranking"], console)
    console.print(f"wrote {args.out}")
    return 0


def rank(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Variants by mean selection accuracy over their seeds (dev shown, never used to order)."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        if "error" not in run:
            by_variant.setdefault(run["variant"], []).append(run)
    table = [
        {
            "variant": name,
            "seeds": [r["seed"] for r in rs],
            "select_acc": statistics.fmean(r["select_acc"] for r in rs),
            "val_acc": statistics.fmean(r["val_acc"] for r in rs),
            "dev_acc": statistics.fmean(r["dev_acc"] for r in rs),
            "train_s": statistics.fmean(r["train_s"] for r in rs),
            "cka_to_pretrained": statistics.fmean(r["cka_to_pretrained"] for r in rs),
        }
        for name, rs in by_variant.items()
    ]
    return sorted(table, key=lambda r: r["select_acc"], reverse=True)


def print_ranking(ranking: list[dict[str, Any]], console: Console) -> None:
    table = Table(title="variants by selection accuracy (held-out training rows)")
    for col in ("variant", "seeds", "select acc", "val acc", "dev acc (report only)", "train s", "CKA"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in ranking:
        table.add_row(
            r["variant"],
            ",".join(map(str, r["seeds"])),
            f"{r['select_acc']:.1%}",
            f"{r['val_acc']:.1%}",
            f"{r['dev_acc']:.1%}",
            f"{r['train_s']:.1f}",
            f"{r['cka_to_pretrained']:.3f}",
        )
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
