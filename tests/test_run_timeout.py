"""train.timeout_minutes: a run that hangs is stopped as SIGTERM stops it, fails as TimedOut, and the next
run resumes.

The hang is real and certain: the probe text file is a FIFO that nobody writes to, so the run blocks
in `open()` (a system call, as a stuck data loader or a dead network mount would) after the bottom
phase has trained and checkpointed. The runs go through the CLI, against the session's Prefect server
so the flow run's final state can be read back.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest
from conftest import make_project, tiny_overrides
from mlflow.tracking import MlflowClient

from flows.run_deadline import DeadlinePassed, RunDeadline
from tasks.phase_launch import run_process_group

pytestmark = pytest.mark.slow

BITUNE = str(Path(sys.executable).with_name("bitune"))
LIMIT = "0.5"  # minutes: twice what a loaded 2-core machine takes to reach the hang
PROBE_TEXT = "A plain English sentence of well over forty characters, for the CKA probe.\n" * 20


class ProbeFeeder:
    """Writes the probe text into the FIFO for each reader, `times` times (None: until stopped)."""

    def __init__(self, fifo: Path, times: int | None) -> None:
        self.fifo, self.times, self.stop = fifo, times, threading.Event()
        self.thread = threading.Thread(target=self._feed, daemon=True)
        self.thread.start()

    def _feed(self) -> None:
        fed = 0
        while not self.stop.is_set() and (self.times is None or fed < self.times):
            with self.fifo.open("w") as pipe:  # blocks until the run opens it to read
                if self.stop.is_set():
                    return
                pipe.write(PROBE_TEXT)
            fed += 1

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():  # blocked waiting for a reader: be that reader
            fd = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
            self.thread.join(timeout=5)
            os.close(fd)


def bitune_run(root: Path, model_dir: Path, probe: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    from prefect.settings import PREFECT_API_URL

    args = [BITUNE, "run", "--project", str(root)]
    for override in [*tiny_overrides(model_dir), f"forgetting.probe_file={probe}", *extra]:
        args += ["--set", override]
    env = os.environ | {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)


def mlflow(root: Path) -> MlflowClient:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_a_run_past_its_time_limit_stops_as_on_sigterm_and_the_next_run_resumes(
    tmp_path: Path, tiny_bert_dir: Path, prefect_db: None
) -> None:
    from prefect.client.orchestration import get_client

    root = make_project(tmp_path / "project", tiny_bert_dir)
    probe = tmp_path / "probe.fifo"
    os.mkfifo(probe)

    feeder = ProbeFeeder(probe, times=1)  # the head phase's probe; the bottom phase's read never returns
    try:
        started = time.monotonic()
        hung = bitune_run(root, tiny_bert_dir, probe, f"train.timeout_minutes={LIMIT}")
        seconds = time.monotonic() - started
    finally:
        feeder.close()

    line = (
        f"error: retrain ran past train.timeout_minutes={LIMIT} and was stopped (MLflow runs KILLED, "
        "checkpoints kept: the next run resumes from them); raise it with --set train.timeout_minutes=... "
        "or find what hung"
    )
    said = [x for x in hung.stderr.splitlines() if x.startswith(("error:", "interrupted:"))]
    assert hung.returncode == 2 and said == [line], hung.stderr[-3000:]
    log = root / ".bitune" / "logs" / "bitune.log"
    assert f"(details in {log})" in hung.stderr
    assert "Traceback" not in hung.stderr
    # the details show where the run was stuck: in the probe file's open(), inside the bottom phase
    assert re.search(r"in load_probe_texts\n.*read_text", log.read_text()), log.read_text()[-3000:]
    assert seconds < 200, seconds

    experiment = mlflow(root).get_experiment_by_name("bitune")
    assert experiment is not None
    runs = {r.info.run_name: r for r in mlflow(root).search_runs([experiment.experiment_id])}
    parent = next(r for r in runs.values() if "mlflow.parentRunId" not in r.data.tags)
    assert parent.info.status == "KILLED"
    assert runs["bottom"].info.status == "KILLED" and runs["head"].info.status == "FINISHED"
    assert not mlflow(root).search_model_versions("name='bitune-classifier'")  # nothing registered
    assert list(root.glob(".bitune/checkpoints/*/bottom/state.json"))  # kept for the next run

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(parent.data.tags["prefect.flow_run_id"])  # type: ignore[arg-type]
    assert flow_run.state is not None
    assert (flow_run.state.type.value, flow_run.state.name) == ("FAILED", "TimedOut")
    assert flow_run.state.message == line.removeprefix("error: ")

    feeder = ProbeFeeder(probe, times=None)
    try:
        resumed = bitune_run(root, tiny_bert_dir, probe)  # no limit: the project lock went with the run
    finally:
        feeder.close()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "head: already trained for this data and params; reusing it whole" in resumed.stderr
    assert re.search(r"bottom: resuming from the checkpoint after epoch 2 of 2", resumed.stderr), (
        resumed.stderr
    )
    md5 = parent.data.tags["bitune.data_version"]
    parents = mlflow(root).search_runs(
        [parent.info.experiment_id], filter_string="attributes.status = 'FINISHED'"
    )
    finished = [r for r in parents if "mlflow.parentRunId" not in r.data.tags]
    # the same data version and pipeline: the timeout left data/ as the data step had made it
    assert [(r.data.tags["bitune.data_version"], r.data.tags["bitune.pipeline_key"]) for r in finished] == [
        (md5, parent.data.tags["bitune.pipeline_key"])
    ]
    assert str(mlflow(root).get_model_version_by_alias("bitune-classifier", "champion").version) == "1"
    # Prefect's closing line names the run as label_flow_run renamed it, not as it started
    assert f"Flow run 'retrain-bidirectional-{md5[:8]}' - Finished in state Completed(" in resumed.stderr


def running(pid: int) -> bool:
    """Alive and not a zombie (a container's init may never reap an orphan)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def test_the_limit_interrupts_a_wait_on_a_process_group_and_stops_every_process(tmp_path: Path) -> None:
    """A distributed phase's launcher and ranks: the main thread blocks in wait(), the limit ends it."""
    pids = tmp_path / "pids"
    script = f"sleep 60 & echo $! > {pids}; echo $$ >> {pids}; wait"
    started = time.monotonic()
    with pytest.raises(DeadlinePassed), (tmp_path / "log").open("w") as log, RunDeadline(0.02):
        run_process_group(["sh", "-c", script], tmp_path, dict(os.environ), log)
    assert time.monotonic() - started < 15  # 1.2 s, then the group's SIGTERM
    for pid in map(int, pids.read_text().split()):
        assert not running(pid), pid
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL  # the handler is put back
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


class Tensor:
    """Anything a weakref callback watches (torch and Prefect keep such callbacks)."""


def test_a_limit_whose_interrupt_lands_in_a_finalizer_interrupts_again() -> None:
    """Python drops an exception raised in a weakref callback ("Exception ignored in ..."); a scheduled run
    has no CLI to deliver it again, so the deadline does."""

    def finalizer(_ref: object) -> None:
        raise DeadlinePassed("landed in a finalizer")

    with pytest.raises(DeadlinePassed), RunDeadline(10):  # ten minutes: only a redelivery comes in time
        tensor = Tensor()
        watched = [weakref.ref(tensor, finalizer)]
        del tensor
        until = time.monotonic() + 5
        while time.monotonic() < until:
            time.sleep(0.01)
    assert watched[0]() is None
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
