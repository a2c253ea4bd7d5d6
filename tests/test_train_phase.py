"""A phase trained through the core, with the recorder the tuning task would pass: what it is told,
in which order, and what the phase hands on. One real head phase on a tiny BERT, no MLflow."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from accelerate import Accelerator
from conftest import REPO, tiny_overrides

from bitune.data.demo import make_demo_frame
from bitune.data.prepare_splits import prepare_splits
from bitune.params import load_params
from bitune.tuning.checkpoint import PhaseCheckpoints
from bitune.tuning.phase_context import PhaseResult
from bitune.tuning.phase_output import RESULT, phase_dir, reused_phase_output
from bitune.tuning.schedule import PhaseRun
from bitune.tuning.train_phase import PhaseRecorder, scheduled_phase, train_phase


class ListRecorder:
    """Records each call by name, as the MLflow recorder would log it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.result_written_at_finish: bool | None = None

    def start(self, run: PhaseRun, accelerator: Accelerator) -> str | None:
        self.calls.append(f"start {run.key}")
        return "run-1"

    def resume(self, run: PhaseRun, checkpoints: PhaseCheckpoints) -> None:
        self.calls.append("resume")

    def epoch(self, run: PhaseRun, metrics: dict[str, float], epoch: int) -> None:
        self.calls.append(f"epoch {epoch}")

    def step(self, run: PhaseRun, metrics: dict[str, float], step: int) -> None:
        pass  # how many depends on the batch plan, not on the recorder

    @contextmanager
    def training(self, device: str) -> Iterator[None]:
        self.calls.append("training")
        yield
        self.calls.append("trained")

    def finish(
        self,
        run: PhaseRun,
        result: PhaseResult,
        cka: float,
        drift: dict[str, float],
        wall: float,
        out_dir: Path,
    ) -> None:
        self.calls.append("finish")
        self.result_written_at_finish = (out_dir / RESULT).exists()


def test_a_phase_tells_its_recorder_in_order_and_hands_on_its_run_id(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    (tmp_path / "data").mkdir()
    make_demo_frame(60, 0).to_csv(tmp_path / "data" / "reviews.csv", index=False)
    params = load_params(
        REPO / "params" / "default.yaml", [*tiny_overrides(tiny_bert_dir), "strategy.phases.0.epochs=2"]
    )
    prepared = prepare_splits(params, "md5-of-the-data", tmp_path)
    run = scheduled_phase(params, 0)
    recorder = ListRecorder()
    checks: PhaseRecorder = recorder  # the protocol the tuning task's MLflow recorder follows

    output = train_phase(params, prepared, run, None, tmp_path, "pipeline", checks)

    assert recorder.calls == [
        f"start {run.key}",
        "resume",
        "training",
        "epoch 1",
        "epoch 2",
        "trained",
        "finish",
    ]
    assert recorder.result_written_at_finish is False  # a phase is done only once its record is closed
    assert output.run_id == "run-1" and len(output.history) == 2
    assert Path(output.model_dir, "bitune.json").is_file()
    reused = reused_phase_output(phase_dir(tmp_path, "pipeline", run.key), run.key)
    assert reused is not None and reused.resumed and reused.run_id == "run-1"
    assert not (tmp_path / params.train.checkpoint_dir / "pipeline" / run.key).exists()
