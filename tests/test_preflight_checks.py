"""Settings that used to fail only mid-run (after the data step) or to pass with exit 0 while training
nothing useful: each is now refused before the data step, or when its phase is built, in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from bitune.device import check_device
from bitune.errors import DataError, ParamsError, TrainingError
from bitune.forgetting import check_probe_file
from bitune.params import PhaseSpec, TrainParams, load_params
from bitune.tuning.optim import build_scheduler

REPO = Path(__file__).resolve().parents[1]


def test_a_label_listed_twice_is_refused_when_params_load() -> None:
    """It got a head output of its own that no row maps to: exit 0, champion, per-class metrics wrong."""
    with pytest.raises(ParamsError, match=r"data.labels: 'negative' is listed twice; list each label once"):
        load_params(REPO / "params/default.yaml", ["data.labels=[negative, positive, negative]"])
    load_params(REPO / "params/default.yaml", ["data.labels=[negative, positive]"])


def scheduler(warmup: float, total_steps: int) -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    build_scheduler(optimizer, PhaseSpec(name="bottom", train=["head"], lr=1e-3, warmup=warmup), total_steps)


def test_warmup_steps_past_the_phase_are_refused() -> None:
    """1000 warmup steps in a 6-step phase: the lr peaked at 0.6% of `lr` and the model did not move."""
    with pytest.raises(
        ParamsError, match=r"^strategy phase 'bottom': warmup 1000 steps, but the phase takes 6;"
    ):
        scheduler(1000, 6)
    with pytest.raises(ParamsError, match="warmup 6 steps"):
        scheduler(6, 6)
    scheduler(5, 6)
    scheduler(0.99, 6)  # a fraction always leaves steps after it


def test_a_missing_probe_file_is_refused_and_a_pipe_is_not_read(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no-such.txt: probe text file not found; fix forgetting.probe_file"):
        check_probe_file(str(tmp_path / "no-such.txt"))
    with pytest.raises(DataError, match="probe text file not found"):
        check_probe_file(str(tmp_path))  # a folder
    fifo = tmp_path / "probe.fifo"
    os.mkfifo(fifo)
    check_probe_file(str(fifo))  # returns at once: opening a pipe nobody writes would block
    check_probe_file(None)  # the bundled sample


def test_cuda_asked_for_on_a_machine_without_it_is_refused() -> None:
    train = TrainParams(device="cuda")
    if torch.cuda.is_available():
        check_device(train)
    else:
        with pytest.raises(TrainingError, match="train.device: cuda requested but no CUDA device is visible"):
            check_device(train)
    check_device(TrainParams(device="auto"))


def test_a_gate_metric_on_a_label_the_data_lacks_is_refused_before_training() -> None:
    """A typo (`test/f1/positve`) trained in full, then never promoted: the metric was 'missing'."""
    from bitune.params import RegistryParams
    from bitune.promotion import check_gate_metric_labels

    labels = ("negative", "positive")
    with pytest.raises(
        ParamsError, match=r"^registry.metric: label 'positve' is not in the data \(labels: negative, pos"
    ):
        check_gate_metric_labels(RegistryParams(metric="test/f1/positve"), labels)
    check_gate_metric_labels(RegistryParams(metric="test/f1/positive"), labels)
    check_gate_metric_labels(RegistryParams(metric="test/macro_f1"), labels)


@pytest.mark.parametrize(
    ("launch_args", "refused"),
    [
        (["--num_machine", "1"], "accelerate launch does not accept --num_machine;"),
        (["--num_machines", "abc"], r"accelerate launch refuses them \(.*invalid int value: 'abc'"),
        (["--num_machines", "1"], None),
    ],
)
def test_launch_args_are_parsed_as_accelerate_launch_parses_them(
    launch_args: list[str], refused: str | None
) -> None:
    """A typo failed the first distributed phase, after the data step."""
    from tasks.phase_launch import check_launch_args

    train = TrainParams(processes=2, launch_args=launch_args)
    if refused is None:
        check_launch_args(train)
    else:
        with pytest.raises(ParamsError, match=rf"^train.launch_args: {refused}"):
            check_launch_args(train)
    check_launch_args(TrainParams(processes=1, launch_args=["--num_machine", "1"]))  # not launched: not read


def test_a_relative_probe_file_is_in_the_project_whatever_the_working_folder(tmp_path: Path) -> None:
    """Distributed ranks run in the project; `bitune run --project P` may start anywhere."""
    from bitune.forgetting import probe_path

    assert probe_path("probe.txt", tmp_path) == str(tmp_path / "probe.txt")
    assert probe_path("/abs/probe.txt", tmp_path) == "/abs/probe.txt"
    assert probe_path(None, tmp_path) is None


def test_a_gate_margin_no_bounded_metric_can_meet_is_refused_when_params_load() -> None:
    """min_delta 1 on F1: every run, a scheduled one every night, kept the old champion."""
    with pytest.raises(
        ParamsError, match=r"registry.min_delta: 1 can never be met: test/macro_f1 lies between 0"
    ):
        load_params(REPO / "params/default.yaml", ["registry.min_delta=1"])
    load_params(
        REPO / "params/default.yaml", ["registry.min_delta=1", "registry.metric=test/loss"]
    )  # unbounded
    load_params(REPO / "params/default.yaml", ["registry.min_delta=0.5"])


def test_a_warmup_past_the_bottom_phase_is_refused_by_the_data_step_before_any_phase(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    """Refused when the split sizes are known, not when the bottom phase starts after the head phase."""
    from conftest import tiny_overrides

    from bitune.data.demo import make_demo_frame
    from bitune.data.prepare_splits import prepare_splits

    (tmp_path / "data").mkdir()
    make_demo_frame(120, 0).to_csv(tmp_path / "data" / "reviews.csv", index=False)
    overrides = tiny_overrides(tiny_bert_dir)
    prepare_splits(load_params(REPO / "params/default.yaml", overrides), "md5", tmp_path)
    params = load_params(REPO / "params/default.yaml", [*overrides, "strategy.phases.1.warmup=1000"])
    with pytest.raises(
        ParamsError, match=r"^strategy phase 'bottom': warmup 1000 steps, but the phase takes \d+;"
    ):
        prepare_splits(params, "md5", tmp_path)


def test_a_database_store_that_is_down_is_said_in_seconds_not_after_mlflows_retries() -> None:
    """MLflow retried creating its engine for about 100 s, then advised checking a folder."""
    from loopback_server import free_port

    from bitune.errors import TrackingError
    from tasks.tracking import TrackingSettings, check_store

    uri = f"postgresql://bitune:S3cret@127.0.0.1:{free_port()}/mlflow"  # nothing listens there
    with pytest.raises(TrackingError) as raised:
        check_store(TrackingSettings(uri=uri, experiment="bitune", artifact_location=None))
    message = str(raised.value)
    assert message.startswith("tracking.uri: cannot connect to the database at postgresql://bitune:***@127")
    assert "Connection refused" in message and "database server is running" in message
    assert "S3cret" not in message and "folder" not in message
