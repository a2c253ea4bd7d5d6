"""The benchmark scripts' own logic: the held-out selection set and the GPU script's FLOP count."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import attention_backends  # noqa: E402
import device_bundle  # noqa: E402
import gpu_throughput  # noqa: E402
import sweep  # noqa: E402
from strategies import bitune_params, carve, evaluate_targets, seed_mean  # noqa: E402


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


def test_selection_rows_can_keep_only_sentence_length_rows() -> None:
    train = pd.DataFrame(
        {"sentence": [" ".join(["word"] * (i % 12 + 1)) + f" {i}" for i in range(600)], "label": [0, 1] * 300}
    )
    sample = train.iloc[:100]
    chosen = sweep.selection_rows(train, sample, 80, seed=0, min_words=10)
    assert len(chosen) == 80 and (chosen["sentence"].str.split().str.len() >= 10).all()
    assert not set(chosen["sentence"]) & set(sample["sentence"])


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


@pytest.mark.parametrize("grid", sorted(sweep.GRIDS))
def test_every_sweep_variant_is_a_valid_params_override(grid: str) -> None:
    variants = sweep.GRIDS[grid]()
    assert variants
    seen = set()
    for name, overrides in variants.items():
        params = bitune_params("bidirectional", 64, overrides, None)  # validates, or raises naming the field
        seen.add((params.strategy.model_dump_json(), params.model.model_dump_json()))
        assert name
    assert len(seen) == len(variants)  # no two names for one configuration


def test_full_data_grid_varies_how_the_anchor_scales() -> None:
    variants = sweep.full_data_grid()
    weights = set()
    for overrides in variants.values():
        bottom = bitune_params("bidirectional", 64, overrides, None).strategy.phases[1]
        weights.add((bottom.anchor, bottom.anchor_rows))
    assert weights == {(0.01, 1800), (0.01, None), (0.0, 1800)}


def test_device_bundle_pins_wheels_from_constraints_and_names_a_missing_pin(tmp_path: Path) -> None:
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("# lock\npydantic==2.14.3\npydantic_core==2.50.4\ntyping-extensions==4.16.0\n")
    assert device_bundle.pinned(("pydantic", "pydantic-core", "typing_extensions"), constraints) == [
        "pydantic==2.14.3",
        "pydantic-core==2.50.4",
        "typing_extensions==4.16.0",
    ]
    with pytest.raises(SystemExit, match="no pin for annotated-types"):
        device_bundle.pinned(("annotated-types",), constraints)
    assert len(device_bundle.pinned(device_bundle.WHEELS, ROOT / "constraints.txt")) == 5


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


def test_gpu_throughput_bf16_weights_trains_the_weights_in_bf16_without_autocast(tmp_path: Path) -> None:
    import json

    out = tmp_path / "gpu.json"
    assert gpu_throughput.main(["--out", str(out), "--bf16-weights"]) == 0
    report = json.loads(out.read_text())
    assert report["config"]["weights_dtype"] == "bfloat16" and report["config"]["precision"] == "no"
    assert report["samples_per_s"] > 0


def test_gpu_throughput_bf16_norms_is_recorded_and_changes_nothing_in_fp32(tmp_path: Path) -> None:
    import json

    out = tmp_path / "gpu.json"
    assert gpu_throughput.main(["--out", str(out), "--bf16-norms"]) == 0
    config = json.loads(out.read_text())["config"]
    assert config["bf16_norms"] is True and config["precision"] == "no"
    assert config["bf16_norm_modules"] == 0  # fp32 on CPU: the norms stay plain LayerNorms


def test_attention_backends_times_or_explains_every_backend(tmp_path: Path) -> None:
    import json

    out = tmp_path / "attention.json"
    assert attention_backends.main(["--out", str(out), "--reps", "1"]) == 0
    results = json.loads(out.read_text())["ms_forward_backward"]
    assert set(results) == {f"{b}{m}" for b in attention_backends.BACKENDS for m in ("", "+mask")}
    assert isinstance(results["math"], float)  # the math backend runs anywhere (NaN: not timed on CPU)


def test_gpu_throughput_profile_writes_a_kernel_table(tmp_path: Path) -> None:
    import json

    out, prof = tmp_path / "gpu.json", tmp_path / "prof.txt"
    assert gpu_throughput.main(["--out", str(out), "--profile", str(prof)]) == 0
    report = json.loads(out.read_text())
    assert report["profile"]["steps"] == 2 and report["profile"]["wall_s"] > 0
    table = prof.read_text()
    assert "aten::addmm" in table or "aten::mm" in table  # the encoder's matmuls were recorded


def test_profile_kernel_time_counts_each_kernel_once() -> None:
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    def event(device: DeviceType, us: float, annotation: bool = False) -> SimpleNamespace:
        return SimpleNamespace(device_type=device, self_device_time_total=us, is_user_annotation=annotation)

    events = [
        event(DeviceType.CPU, 120.0),  # aten::mm: its kernel's time again
        event(DeviceType.CUDA, 113.0),  # the matmul kernel
        event(DeviceType.CUDA, 31.0),  # a fused triton kernel
        event(DeviceType.CUDA, 31.0, annotation=True),  # the same kernel's annotation row
    ]
    assert gpu_throughput.kernel_microseconds(events) == 144.0


def _run(seed: int, dev: float, bottom_speed: float) -> dict:
    return {
        "seed": seed,
        "kind": "bitune",
        "dev_acc": dev,
        "val_acc": 0.9,
        "train_s": 10.0 + seed,
        "train_samples_per_s": 100.0,
        "cka_to_pretrained": 0.9,
        "phases": [
            {"key": "bottom", "dev_acc": dev, "train_samples_per_s": bottom_speed, "feature_cache": False}
        ],
    }


def test_strategies_averages_training_seeds_and_reports_the_spread() -> None:
    merged = seed_mean([_run(0, 0.80, 100.0), _run(1, 0.84, 140.0), _run(2, 0.82, 120.0)])
    assert merged["dev_acc"] == pytest.approx(0.82)
    assert merged["dev_acc_sd"] == pytest.approx(0.02)
    assert merged["train_s"] == pytest.approx(11.0)
    assert merged["phases"][0]["train_samples_per_s"] == pytest.approx(120.0)
    assert [r["seed"] for r in merged["by_seed"]] == [0, 1, 2]
    trainer = {**seed_mean([_run(s, 0.80, 50.0) for s in range(3)]), "kind": "trainer"}
    trainer["dev_acc_sd"] = 0.02  # ±2 points on both sides: the +2-point gain has a 1.6-point error
    target = evaluate_targets({"trainer_full": trainer, "bidirectional": merged})["bidirectional"]
    assert target["dev_gain_points_vs_trainer_full"] == pytest.approx(2.0)
    assert target["dev_gain_se_points"] == pytest.approx(100 * (2 * 0.02**2 / 3) ** 0.5)


def test_full_data_run_is_held_to_the_absolute_target_not_the_gain() -> None:
    trainer = {**_run(0, 0.893, 100.0), "train_s": 500.0}
    bitune = {**_run(0, 0.903, 200.0), "train_s": 520.0}
    results = {"trainer_full": trainer, "bidirectional": bitune}
    full = evaluate_targets(results, full_data=True)["bidirectional"]
    assert full["parts"] == {"accuracy": False, "time": False} and full["passed"] is False
    assert "90.5%" in full["target"]
    faster = {**bitune, "dev_acc": 0.906, "train_s": 480.0}
    assert evaluate_targets({**results, "bidirectional": faster}, True)["bidirectional"]["passed"] is True
    assert "points" in evaluate_targets(results)["bidirectional"]["target"]  # 2k rows: the gain target


def test_strategies_counts_a_job_failed_when_any_training_seed_failed() -> None:
    merged = seed_mean([_run(0, 0.80, 100.0), {"seed": 1, "error": "TrainingError: loss became nan"}])
    assert merged == {"error": "TrainingError: loss became nan"}
    assert "seed" not in seed_mean([_run(0, 0.80, 100.0)])
