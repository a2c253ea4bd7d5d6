"""What a trained phase hands on, and its `result.json`: the record that the phase is done.

A phase whose output already exists for this pipeline key is not trained again: a rerun after a crash
picks up at the first phase without one. The file's fields are `PhaseOutput`'s; existing projects
reuse theirs, so a field is only ever added, with a default.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bitune.pipeline import pipeline_dir

log = logging.getLogger("bitune")
RESULT = "result.json"


@dataclass(frozen=True)
class PhaseOutput:
    key: str
    name: str
    model_dir: str
    run_id: str | None
    best: dict[str, float]  # the best epoch seen (by early_stopping.metric)
    cka_to_pretrained: float
    kept: dict[str, float] = field(default_factory=dict)  # the epoch whose weights were handed on
    kept_epoch: int = 0
    drift: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    samples_per_s: float = 0.0
    resumed: bool = False

    def summary_row(self) -> dict[str, object]:
        """What the run's summary shows of this phase: the handed-on epoch's validation scores."""
        scores = {k: v for k, v in (self.kept or self.best).items() if k.startswith("val_")}
        return {"phase": self.key, **scores, "cka": self.cka_to_pretrained, "seconds": self.train_seconds}


def phase_dir(root: Path, pipeline_key: str, phase_key: str) -> Path:
    """Where one phase of one pipeline keeps its model, result and plot."""
    return pipeline_dir(root, pipeline_key) / phase_key


def read_phase_output(out_dir: Path) -> PhaseOutput:
    return PhaseOutput(**json.loads((out_dir / RESULT).read_text()))


def write_phase_output(out_dir: Path, output: PhaseOutput) -> None:
    (out_dir / RESULT).write_text(json.dumps(asdict(output), indent=2))


def reused_phase_output(out_dir: Path, phase_key: str) -> PhaseOutput | None:
    """The output of a phase already trained for this data and params (said in the log), else None."""
    if not (out_dir / RESULT).exists():
        return None
    log.info("%s: already trained for this data and params; reusing it whole (%s)", phase_key, out_dir)
    return PhaseOutput(**{**json.loads((out_dir / RESULT).read_text()), "resumed": True})
