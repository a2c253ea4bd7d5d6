"""Crashes: kill -9 mid bottom phase then resume; SIGTERM marks runs KILLED; secrets never logged.

Runs the real CLI as a subprocess in a tmp project, the way a scheduler would. The first run of the
straight project and the killed run start Prefect's temporary server, as `make run` does (the killed
run's must die with it); the resume and the SIGTERM run use the session's server (`shared_prefect`).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_project, tiny_overrides
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

BITUNE = str(Path(sys.executable).with_name("bitune"))
SECRET = "s3cr3t-Zq81-never-log-me"
# Long enough a bottom phase to be killed in the middle of it (0.1-0.5 s an epoch here).
SLOW_BOTTOM = ["data.demo_rows=300", "strategy.phases.1.epochs=30"]
ACCURACY_TOLERANCE = 0.0  # resume restores weights, optimizer, scheduler and RNG: results are identical


def command(root: Path, model_dir: Path, *extra: str) -> list[str]:
    args = [BITUNE, "run", "--project", str(root)]
    for override in tiny_overrides(model_dir) + SLOW_BOTTOM:
        args += ["--set", override]
    return args + list(extra)


def env(prefect: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a scheduled job: credentials present, as in production. `prefect`: the
    session's Prefect server (conftest's `shared_prefect`); without it the run starts its own."""
    secrets = {"AWS_SECRET_ACCESS_KEY": SECRET, "MLFLOW_TRACKING_PASSWORD": SECRET}
    return os.environ | secrets | (prefect or {})


def client(root: Path) -> MlflowClient:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def wait_for_bottom_epoch(
    root: Path, proc: subprocess.Popen[bytes], epoch: int, timeout: float = 240
) -> None:
    """Block until the bottom phase has checkpointed `epoch` (and is still running)."""
    import json

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for state in root.glob(".bitune/checkpoints/*/bottom/state.json"):
            try:
                if json.loads(state.read_text())["epoch"] >= epoch:
                    return
            except (ValueError, OSError):
                pass  # being replaced right now
        if proc.poll() is not None:
            raise AssertionError(f"run ended (exit {proc.returncode}) before bottom epoch {epoch}")
        time.sleep(0.05)
    raise AssertionError(f"no bottom checkpoint of epoch {epoch} within {timeout} s")


def finished(
    root: Path, args: list[str], prefect: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, env=env(prefect), timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def runs(root: Path) -> list:  # type: ignore[type-arg]
    c = client(root)
    exp = c.get_experiment_by_name("bitune")
    return c.search_runs([exp.experiment_id]) if exp else []


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_bert_dir):  # type: ignore[no-untyped-def]
    """A fresh project's first `bitune run`, to the end, with Prefect's temporary server (as `make run`)."""
    root = make_project(tmp_path_factory.mktemp("straight"), tiny_bert_dir)
    finished(root, command(root, tiny_bert_dir))
    return root


def prefect_servers_started_by(test_id: str) -> list[int]:
    """Pids of the temporary Prefect servers whose environment holds this test's id (inherited in
    PYTEST_CURRENT_TEST from the run it started): Prefect starts them in a session of their own. The
    session's server (`shared_prefect`), a child of this process, may hold the id too if this test
    started it: it is no run's."""
    pids = []
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            if b"prefect.server.api.server:create_app" not in (proc_dir / "cmdline").read_bytes():
                continue
            if int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                continue
            if test_id.encode() in (proc_dir / "environ").read_bytes():
                pids.append(int(proc_dir.name))
        except (OSError, ValueError):  # gone meanwhile, or not ours to read
            continue
    return pids


def running(pid: int) -> bool:
    try:
        return b") Z" not in Path(f"/proc/{pid}/stat").read_bytes()  # a zombie has exited
    except FileNotFoundError:  # reaped
        return False


def wait_until_gone(pids: list[int], timeout_s: float) -> list[int]:
    """The pids still running (not zombies) after up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = [pid for pid in pids if running(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def test_kill_9_in_bottom_phase_resumes_and_registers_once(  # type: ignore[no-untyped-def]
    tmp_path, tiny_bert_dir, uninterrupted, shared_prefect
) -> None:
    root = make_project(tmp_path / "p", tiny_bert_dir)
    proc = subprocess.Popen(
        command(root, tiny_bert_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env(),
        start_new_session=True,
    )
    test_id = os.environ["PYTEST_CURRENT_TEST"].split(" ")[0]
    try:
        wait_for_bottom_epoch(root, proc, 3)
        servers = prefect_servers_started_by(test_id)
        assert len(servers) == 1, servers
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # the run's temporary Prefect server dies with it (the kernel's SIGTERM), not left for ever
    left = wait_until_gone(servers, timeout_s=15)
    for pid in left:
        os.kill(pid, signal.SIGKILL)  # clean up before failing: never leak one per suite run
    assert not left, "the killed run's temporary Prefect server is still running"
    assert not list(root.glob(".bitune/runs/*/bottom/result.json")), "the phase finished before the kill"
    assert {r.info.status for r in runs(root)} >= {"RUNNING"}

    rerun_started_ms = time.time() * 1000
    rerun = finished(root, command(root, tiny_bert_dir), shared_prefect)
    said = rerun.stdout + rerun.stderr

    all_runs = runs(root)
    assert "RUNNING" not in {r.info.status for r in all_runs}
    killed = [r for r in all_runs if r.info.status == "KILLED"]
    assert {r.info.run_name for r in killed} >= {"bottom"}  # the stale parent and bottom runs were closed
    bottoms = [r for r in all_runs if r.info.run_name == "bottom" and r.info.status == "FINISHED"]
    assert len(bottoms) == 1 and int(bottoms[0].data.tags["bitune.resumed_from_epoch"]) >= 3
    # the rerun says what it picks up: the head phase whole, the bottom phase from its checkpoint
    assert re.search(r"head: already trained for this data and params; reusing it whole \(/", said), said[
        -3000:
    ]
    resumed_line = re.search(r"bottom: resuming from the checkpoint after epoch (\d+) of 30 \((\S+)\)", said)
    assert resumed_line, said[-3000:]
    assert resumed_line[1] == bottoms[0].data.tags["bitune.resumed_from_epoch"]
    assert resumed_line[2].startswith(str(root / ".bitune" / "checkpoints")) and resumed_line[2].endswith(
        "/bottom"
    )
    # the resumed run carries every epoch trained before the kill (from the checkpoint, which holds
    # them all: the kill can fall between an epoch's checkpoint and its metrics), each epoch once
    history = client(root).get_metric_history(bottoms[0].info.run_id, "bottom/val/accuracy")
    assert sorted(m.step for m in history) == list(range(1, 31))
    killed_bottom = bottoms[0].data.tags["bitune.resumed_from_run"]
    assert client(root).get_run(killed_bottom).info.status == "KILLED"
    before_kill = {
        m.step: m.value for m in client(root).get_metric_history(killed_bottom, "bottom/val/accuracy")
    }
    assert before_kill and {m.step: m.value for m in history if m.step in before_kill} == before_kill
    step_losses = client(root).get_metric_history(bottoms[0].info.run_id, "bottom/train/step_loss")
    assert min(m.timestamp for m in step_losses) < rerun_started_ms  # the killed run's steps, copied
    versions = client(root).search_model_versions("name='bitune-classifier'")
    assert len(versions) == 1
    # and the run of the registered version shows every phase: the head phase, reused whole, as a copy
    children = {
        r.info.run_name: r for r in all_runs if r.data.tags.get("mlflow.parentRunId") == versions[0].run_id
    }
    assert set(children) == {"head", "bottom", "evaluate"}
    head = children["head"]
    trained_head = client(root).get_run(head.data.tags["bitune.reused_from_run"])
    assert trained_head.data.tags["mlflow.parentRunId"] != versions[0].run_id  # the killed run's
    assert head.data.metrics == trained_head.data.metrics and head.data.metrics["head/cka_to_pretrained"] > 0
    assert head.data.params == trained_head.data.params
    assert "drift_per_layer.png" in {a.path for a in client(root).list_artifacts(head.info.run_id)}

    def test_metrics(project: Path) -> dict[str, float]:
        return next(
            r for r in runs(project) if r.info.run_name == "evaluate" and r.info.status == "FINISHED"
        ).data.metrics

    resumed, straight = test_metrics(root), test_metrics(uninterrupted)
    assert abs(resumed["test/accuracy"] - straight["test/accuracy"]) <= ACCURACY_TOLERANCE
    assert resumed["test/loss"] == pytest.approx(straight["test/loss"], rel=1e-4)


def test_sigterm_marks_runs_killed_and_keeps_the_champion(  # type: ignore[no-untyped-def]
    uninterrupted, tiny_bert_dir, shared_prefect
) -> None:
    root = uninterrupted
    champion = client(root).get_model_version_by_alias("bitune-classifier", "champion").version
    proc = subprocess.Popen(
        command(root, tiny_bert_dir, "--force"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env(shared_prefect),
    )
    wait_for_bottom_epoch(root, proc, 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert b"Traceback" not in err
    # --force on the same data: the data step changed nothing, and --force had cleared the checkpoints
    said = (
        "interrupted: the MLflow run is marked KILLED; data, registry and champion are unchanged; "
        "bitune run --force starts over"
    )
    assert said in err.decode(), err.decode()[-2000:]
    newest_parent = max(
        (r for r in runs(root) if "mlflow.parentRunId" not in r.data.tags), key=lambda r: r.info.start_time
    )
    assert newest_parent.info.status == "KILLED"
    assert "RUNNING" not in {r.info.status for r in runs(root)}
    assert client(root).get_model_version_by_alias("bitune-classifier", "champion").version == champion
    assert len(client(root).search_model_versions("name='bitune-classifier'")) == 1


def test_secrets_in_the_environment_never_reach_mlflow(uninterrupted) -> None:  # type: ignore[no-untyped-def]
    c = client(uninterrupted)
    for run in runs(uninterrupted):
        blob = repr(run.data.params) + repr(run.data.tags)
        assert SECRET not in blob
        for artifact in c.list_artifacts(run.info.run_id):
            if not artifact.is_dir and artifact.path.endswith((".json", ".md", ".txt", ".yaml")):
                local = c.download_artifacts(run.info.run_id, artifact.path)
                assert SECRET not in Path(local).read_text(errors="ignore"), artifact.path


def test_an_interrupt_after_the_data_step_says_where_the_data_now_is() -> None:
    from flows.cli import left_after_interrupt

    same = left_after_interrupt("aaaaaaaa11.dir", "aaaaaaaa11.dir")
    assert same.startswith("data, registry and champion are unchanged; run again to resume")
    moved = left_after_interrupt("aaaaaaaa11.dir", "bbbbbbbb22.dir")
    assert moved.startswith(
        "the data step had finished, so data/ and data.dvc now hold data version bbbbbbbb (was aaaaaaaa); "
        "registry and champion are unchanged"
    )
    assert "hold data version bbbbbbbb (there was none)" in left_after_interrupt(None, "bbbbbbbb22.dir")
