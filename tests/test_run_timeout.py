"""A run stopped from outside ends in one line, keeps its checkpoints, and the next run resumes: Ctrl-C in
a terminal, then `train.timeout_minutes` (stopped as SIGTERM stops it, failed as TimedOut).

One project goes through both, three runs in all: a Ctrl-C'd run, a run past its limit that resumes
the first, and a run that resumes the second and finishes. The hang is real and certain: the probe
text file is a FIFO that nobody writes to, so a run blocks in `open()` (a system call, as a stuck data
loader or a dead network mount would) after the bottom phase has trained and checkpointed, the only
place left for Ctrl-C or the limit to land. The limit's run resumes from the first run's
checkpoint: it reaches the hang without a first run's set-up (a new MLflow store, the first data
version), so a short limit is still twice what it needs on a loaded 2-core machine.

Ctrl-C is SIGINT to the whole foreground process group, Prefect's temporary server too. Found in an
audit: the temporary server stopped with the run, so the interrupted run could not record its end; it
retried for two minutes and failed with "unexpected ConnectError ... a bug in bitune", exit 1. The
later runs use the session's Prefect server, so the flow run's final state can be read back.
(tests/test_crash_resume.py signals the bitune process alone, mid-epoch: kill -9 with its temporary
server, SIGTERM on the session's.)
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest
from conftest import make_project, tiny_overrides
from mlflow.tracking import MlflowClient
from test_crash_resume import wait_for_bottom_epoch

from flows.run_deadline import DeadlinePassed, RunDeadline
from tasks.phase_launch import run_process_group

pytestmark = pytest.mark.slow

BITUNE = str(Path(sys.executable).with_name("bitune"))
LIMIT = "0.5"  # minutes: four times the 6-7 s a loaded 2-core machine takes a resuming run to reach the hang
# a foreground job's SIGINT (a test runner may ignore it, and children inherit that), then the command;
# not `preexec_fn`, which is unsafe once this process has threads (the feeder, the Prefect harness)
SIGINT_DEFAULT_THEN_EXEC = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)
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
            try:
                with self.fifo.open("w") as pipe:  # blocks until the run opens it to read
                    if self.stop.is_set():
                        return
                    pipe.write(PROBE_TEXT)
            except BrokenPipeError:  # the reader was stopped mid-read (the point of these tests)
                continue
            fed += 1

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():  # blocked waiting for a reader: be that reader
            fd = os.open(self.fifo, os.O_RDONLY | os.O_NONBLOCK)
            self.thread.join(timeout=5)
            os.close(fd)


def run_args(root: Path, model_dir: Path, probe: Path, *extra: str) -> list[str]:
    args = [BITUNE, "run", "--project", str(root)]
    for override in [*tiny_overrides(model_dir), f"forgetting.probe_file={probe}", *extra]:
        args += ["--set", override]
    return args


def bitune_run(
    root: Path, model_dir: Path, probe: Path, prefect: dict[str, str], *extra: str
) -> subprocess.CompletedProcess[str]:
    """A run against the session's Prefect server (`prefect`: conftest's `shared_prefect`)."""
    return subprocess.run(
        run_args(root, model_dir, probe, *extra),
        capture_output=True,
        text=True,
        env=os.environ | prefect,
        timeout=300,
    )


def ctrl_c_in_the_bottom_phase(root: Path, model_dir: Path, probe: Path) -> tuple[int, str, float]:
    """A run with its own temporary Prefect server, in a process group of its own as a terminal's
    foreground job, sent SIGINT once the bottom phase has checkpointed its last epoch: (exit status,
    stderr, seconds from the signal to the end)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}  # its own server
    feeder = ProbeFeeder(probe, times=1)  # the head phase's probe; the bottom phase's read never returns
    proc = subprocess.Popen(
        [sys.executable, "-c", SIGINT_DEFAULT_THEN_EXEC, *run_args(root, model_dir, probe)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_for_bottom_epoch(root, proc, 2)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does
        started = time.monotonic()
        _, err = proc.communicate(timeout=150)
        return proc.returncode, err.decode(), time.monotonic() - started
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        feeder.close()


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def mlflow(root: Path) -> MlflowClient:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def parent_runs(root: Path) -> list:  # type: ignore[type-arg]
    """The retrain runs (not their phases), oldest first."""
    client = mlflow(root)
    experiment = client.get_experiment_by_name("bitune")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    return sorted(
        (r for r in runs if "mlflow.parentRunId" not in r.data.tags), key=lambda r: r.info.start_time
    )


def test_ctrl_c_then_a_run_past_its_limit_each_end_in_one_line_and_the_next_run_resumes(
    tmp_path: Path, tiny_bert_dir: Path, shared_prefect: dict[str, str]
) -> None:
    from prefect.client.orchestration import get_client

    root = make_project(tmp_path / "project", tiny_bert_dir)
    probe = tmp_path / "probe.fifo"
    os.mkfifo(probe)
    log = root / ".bitune" / "logs" / "bitune.log"

    # Ctrl-C: one line, exit 130, runs closed KILLED, and the detached temporary server still stops
    status, stderr, seconds = ctrl_c_in_the_bottom_phase(root, tiny_bert_dir, probe)
    assert status == 130, stderr[-3000:]
    assert seconds < 60, seconds  # not two minutes of retries against a server that is gone
    lines = [line for line in stderr.splitlines() if line.startswith(("interrupted:", "error:"))]
    assert len(lines) == 1 and lines[0].startswith("interrupted: the MLflow run is marked KILLED; "), lines
    assert lines[0].endswith("run again to resume from the last checkpoint"), lines
    assert "ERROR" not in stderr and "Traceback" not in stderr, stderr[-3000:]
    port = int(re.search(r"Starting temporary server on http://127\.0\.0\.1:(\d+)", stderr).group(1))  # type: ignore[union-attr]
    assert not listening(port)
    client = mlflow(root)
    experiment = client.get_experiment_by_name("bitune")
    assert experiment is not None
    assert {r.info.status for r in client.search_runs([experiment.experiment_id])} == {"KILLED", "FINISHED"}

    # past the limit: the run resumes the interrupted one (so the lock went with it), hangs, is stopped
    logged_before = log.stat().st_size
    started = time.monotonic()
    hung = bitune_run(root, tiny_bert_dir, probe, shared_prefect, f"train.timeout_minutes={LIMIT}")
    seconds = time.monotonic() - started
    assert "head: already trained for this data and params; reusing it whole" in hung.stderr, hung.stderr
    assert "bottom: resuming from the checkpoint after epoch 2 of 2" in hung.stderr, hung.stderr
    line = (
        f"error: retrain ran past train.timeout_minutes={LIMIT} and was stopped (MLflow runs KILLED, "
        "checkpoints kept: the next run resumes from them); raise it with --set train.timeout_minutes=... "
        "or find what hung"
    )
    said = [x for x in hung.stderr.splitlines() if x.startswith(("error:", "interrupted:"))]
    assert hung.returncode == 2 and said == [line], hung.stderr[-3000:]
    assert f"(details in {log})" in hung.stderr
    assert "Traceback" not in hung.stderr
    # the details show where the run was stuck: in the probe file's open(), inside the bottom phase
    details = log.read_text()[logged_before:]
    assert re.search(r"in load_probe_texts\n.*read_text", details), details[-3000:]
    assert seconds < 200, seconds

    timed_out = parent_runs(root)[-1]
    assert timed_out.info.status == "KILLED"
    phases = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{timed_out.info.run_id}'"
    )
    # the head was reused: a finished copy of the run that trained it, under this parent too
    assert sorted((r.info.run_name, r.info.status) for r in phases) == [
        ("bottom", "KILLED"),
        ("head", "FINISHED"),
    ]
    assert next(r for r in phases if r.info.run_name == "head").data.tags["bitune.reused_from_run"]
    assert not client.search_model_versions("name='bitune-classifier'")  # nothing registered
    assert list(root.glob(".bitune/checkpoints/*/bottom/state.json"))  # kept for the next run

    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(timed_out.data.tags["prefect.flow_run_id"])  # type: ignore[arg-type]
    assert flow_run.state is not None
    assert (flow_run.state.type.value, flow_run.state.name) == ("FAILED", "TimedOut")
    assert flow_run.state.message == line.removeprefix("error: ")

    # no limit: the next run resumes from the stopped one and finishes
    feeder = ProbeFeeder(probe, times=None)
    try:
        resumed = bitune_run(root, tiny_bert_dir, probe, shared_prefect)
    finally:
        feeder.close()
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "head: already trained for this data and params; reusing it whole" in resumed.stderr
    assert "bottom: resuming from the checkpoint after epoch 2 of 2" in resumed.stderr, resumed.stderr
    md5 = timed_out.data.tags["bitune.data_version"]
    finished = [r for r in parent_runs(root) if r.info.status == "FINISHED"]
    # the same data version and pipeline: neither stop left data/ other than the data step had made it
    assert [(r.data.tags["bitune.data_version"], r.data.tags["bitune.pipeline_key"]) for r in finished] == [
        (md5, timed_out.data.tags["bitune.pipeline_key"])
    ]
    assert str(client.get_model_version_by_alias("bitune-classifier", "champion").version) == "1"
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
