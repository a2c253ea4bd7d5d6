"""The benchmark scripts' own logic: the held-out selection set and the GPU script's FLOP count."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import gpu_throughput  # noqa: E402
import sweep  # noqa: E402
from strategies import carve  # noqa: E402


def sst2_like(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"sentence": [f"text {i % (n // 2)}" for i in range(n)], "label": [i % 2 for i in range(n)]}
    )


def test_selection_rows_never_share_a_sentence_with_the_benchmark_sample() -> None:
    train = sst2_like(400)  # every sentence appears twice: a duplicate must not leak into selection
    fit, val = carve(train, 100, 0.1, seed=0)
    sample = pd.concat([fit, val])
    chosen = sweep.selection_rows(train, sample, 50, seed=0)
    assert len(chosen) == 50
    assert not set(chosen["sentence"]) & set(sample["sentence"])
    assert chosen.equals(sweep.selection_rows(train, sample, 50, seed=0))


def test_sweep_ranks_by_selection_accuracy_and_averages_seeds() -> None:
    runs = [
        {
            "variant": "a",
            "seed": 0,
            "select_acc": 0.80,
            "val_acc": 0.9,
            "dev_acc": 0.9,
            "train_s": 1.0,
            "cka_to_pretrained": 1.0,
        },
        {
            "variant": "a",
            "seed": 1,
            "select_acc": 0.70,
            "val_acc": 0.9,
            "dev_acc": 0.9,
            "train_s": 1.0,
            "cka_to_pretrained": 1.0,
        },
        {
            "variant": "b",
            "seed": 0,
            "select_acc": 0.76,
            "val_acc": 0.5,
            "dev_acc": 0.5,
            "train_s": 1.0,
            "cka_to_pretrained": 1.0,
        },
        {"variant": "c", "seed": 0, "error": "boom"},
    ]
    ranking = sweep.rank(runs)
    assert [r["variant"] for r in ranking] == ["b", "a"]  # a's mean 0.75 < b's 0.76; dev never decides
    assert ranking[1]["seeds"] == [0, 1]


def test_bottom_phase_flops_count_weight_gradients_only_where_layers_train() -> None:
    per_layer = gpu_throughput.layer_flops(768, 3072, 128)
    assert per_layer == 2 * 128 * (4 * 768 * 768 + 2 * 768 * 3072) + 4 * 128 * 128 * 768
    all_trained = gpu_throughput.bottom_phase_flops(768, 3072, 128, 12, 12, 2)
    three = gpu_throughput.bottom_phase_flops(768, 3072, 128, 12, 3, 2)
    assert all_trained - three == pytest.approx(9 * per_layer)


def test_gpu_throughput_runs_the_engine_on_cpu_as_a_wiring_check(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    assert gpu_throughput.main(["--out", str(out)]) == 0
    import json

    report = json.loads(out.read_text())
    assert report["samples_per_s"] > 0 and report["mfu"] is None
    assert report["trainable_params"] > 0
