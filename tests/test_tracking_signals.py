"""A stop signal that lands during an MLflow write is delivered only after the write commits."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tasks.tracking import TrackingSettings, log_metrics, signals_held, start_run


class Stopped(Exception):
    """What the test's SIGTERM handler raises, like Prefect's TerminationSignal."""


def test_sigterm_inside_a_write_is_delivered_after_it(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    settings = TrackingSettings(uri=uri, experiment="signals", artifact_location=None)
    run_id = start_run(settings, "run", {})
    seen: list[str] = []

    def stop(_signum: int, _frame: object) -> None:
        seen.append("handler")
        raise Stopped

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with pytest.raises(Stopped):
            with signals_held():
                os.kill(os.getpid(), signal.SIGTERM)
                log_metrics(settings, run_id, {"m": 1.0})
                seen.append("write done")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == ["write done", "handler"]
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is put back
    # the store is usable afterwards: the run can still be marked KILLED
    MlflowClient(uri).set_terminated(run_id, status="KILLED")
    run = MlflowClient(uri).get_run(run_id)
    assert run.data.metrics["m"] == 1.0 and run.info.status == "KILLED"
