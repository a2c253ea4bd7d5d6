"""Entry point of each process of a distributed phase: `python -m tasks.phase_worker JOB.json`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bitune.data.prepared import PreparedData
from bitune.params import Params
from bitune.tuning.phase_output import PhaseOutput
from tasks.tracking import TrackingSettings
from tasks.tuning import tune_phase_fn


def main(job_file: str) -> None:
    job = json.loads(Path(job_file).read_text())
    tune_phase_fn(
        Params.model_validate(job["params"]),
        PreparedData(**job["prepared"]),
        job["phase_index"],
        PhaseOutput(**job["previous"]) if job["previous"] else None,
        Path(job["root"]),
        job["pipeline_key"],
        TrackingSettings(**job["settings"]) if job["settings"] else None,
        job["parent_run_id"],
    )


if __name__ == "__main__":
    main(sys.argv[1])
