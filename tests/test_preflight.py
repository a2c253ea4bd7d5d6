"""Servers down or a model that cannot load: `bitune run` fails in seconds, in one line, before the data step.

The CLI checks these before Prefect starts and before it imports the flow (torch, transformers: 5-10 s
on a 2-core machine), so no flow run is created; a scheduled run's flow checks them again in its
preflight task (tests/test_hub_offline_preflight.py, tests/test_data_remote_validation.py).

Each case passes new data (`--data`), so a run that reached the data step would rewrite data.dvc,
data/, the DVC cache and the remote; the preflight must stop it first. Real parts throughout: a
DVC repo with a data version, the real CLI in a subprocess, tracking/Prefect URLs on a loopback port
nothing listens on.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import make_project
from project_state import data_state
from test_bad_inputs import PREFECT_INFO, bitune_run, csv, free_port, prefect_env, tiny_args  # noqa: F401

from bitune.data.demo import make_demo_frame
from bitune.params import DataParams
from tasks import dvc_store
from tasks.data import version_data_fn

pytestmark = pytest.mark.slow

CLOSED = f"http://127.0.0.1:{free_port()}"  # bound once, then released: nothing listens there


def no_weights(model_dir: Path, dest: Path) -> None:
    """A folder with config and tokenizer but no safetensors weights."""
    shutil.copytree(model_dir, dest, ignore=lambda d, names: [n for n in names if n.endswith(".safetensors")])


@dataclass(frozen=True)
class Case:
    id: str
    args: list[str]  # after `--data new.csv` and the tiny overrides; {in} is the inputs folder
    expect: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    make: Callable[[Path, Path], None] | None = None  # (tiny model dir, inputs folder)
    in_flow: bool = False  # said by the flow's preflight (it needs the model's structure), not the CLI


CASES = [
    Case(
        "tracking-uri-down",
        ["--set", f"tracking.uri={CLOSED}"],
        (f"tracking.uri: cannot reach MLflow at {CLOSED}", "start the server", "MLFLOW_TRACKING_URI"),
    ),
    Case(
        "tracking-env-down",
        [],
        (f"MLFLOW_TRACKING_URI: cannot reach MLflow at {CLOSED}", "start the server"),
        env={"MLFLOW_TRACKING_URI": CLOSED},
    ),
    Case(
        "model-folder-missing",
        ["--set", "model.name_or_path=/nonexistent/bert"],
        ("model.name_or_path: /nonexistent/bert is not a model folder", "Hugging Face id"),
    ),
    Case(
        "model-without-weights",
        ["--set", "model.name_or_path={in}/no-weights"],
        ("model.name_or_path:", "no-weights has no safetensors weights", "save_pretrained"),
        make=lambda model, inputs: no_weights(model, inputs / "no-weights"),
    ),
    Case(
        "hub-id-not-cached-offline",
        ["--set", "model.name_or_path=bitune-tests/no-such-model"],
        (
            "model.name_or_path: 'bitune-tests/no-such-model' is not in the local Hugging Face cache",
            "unset HF_HUB_OFFLINE",
        ),
    ),
    Case(  # the CLI's store check must not have created mlflow.db for the flow's refusal to leave behind
        "layers-past-the-model",
        ["--set", "strategy.phases.1.train=[embeddings, 'layers[0:9]', head]"],
        ("strategy.phases.1.train: 'layers[0:9]' reaches past this model's", "use indices within"),
        in_flow=True,
    ),
    Case(
        "prefect-api-down",
        [],
        (f"PREFECT_API_URL: no Prefect server answers at {CLOSED}/api", "prefect server start"),
        env={"PREFECT_API_URL": f"{CLOSED}/api"},
    ),
]


@pytest.fixture(scope="module")
def versioned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with one data version (the demo) in the cache and the remote; no run yet."""
    root = make_project(tmp_path_factory.mktemp("project"), Path())
    version_data_fn(DataParams(demo_rows=60), root)
    assert dvc_store.data_version(root)
    return root


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_preflight_fails_fast_in_one_line_before_the_data_step(  # type: ignore[no-untyped-def]
    case: Case,
    versioned: Path,
    tiny_bert_dir: Path,
    prefect_env,  # noqa: F811 - the fixture imported from test_bad_inputs: one Prefect server
    tmp_path: Path,
) -> None:
    project = tmp_path / "project"
    shutil.copytree(versioned, project)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "new.csv").write_bytes(csv(make_demo_frame(60, 5)))  # would be a new data version
    if case.make:
        case.make(tiny_bert_dir, inputs)
    before = data_state(project)
    args = [
        *tiny_args(tiny_bert_dir),
        "--data",
        str(inputs / "new.csv"),
        *(a.replace("{in}", str(inputs)) for a in case.args),
    ]
    started = time.monotonic()
    proc = bitune_run(project, args, prefect_env | case.env)
    seconds = time.monotonic() - started

    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not PREFECT_INFO.match(line)]
    assert len(lines) == 2, proc.stderr
    error, details = lines
    assert error.startswith("error: ") and details.startswith("(details in "), lines
    for part in case.expect:
        assert part in error, (part, error)
    assert data_state(project) == before  # data.dvc, data/, no new cache or remote objects
    assert not (project / "mlflow.db").exists()  # no run, not even an empty store
    # said by the CLI before Prefect and the flow's imports (5-10 s): no flow run was created
    prefect_lines = [line for line in proc.stderr.splitlines() if PREFECT_INFO.match(line)]
    assert bool(prefect_lines) == case.in_flow, proc.stderr
    # MLflow's own retries (7, backing off) would take minutes: the preflight asks once
    assert seconds < 120, seconds


def test_tracking_lookups_fail_as_one_line_errors_and_the_check_restores_mlflow_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The skip check used to let MLflow's raw exception (after its retries) reach the terminal."""
    from bitune.errors import TrackingError
    from tasks.runs import previous_success_fn
    from tasks.tracking import TrackingSettings, check_reachable

    settings = TrackingSettings(uri=CLOSED, experiment="bitune", artifact_location=None)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the lookup's own retries: not under test
    with pytest.raises(TrackingError, match=rf"^tracking.uri: cannot reach MLflow at {CLOSED} .*start"):
        previous_success_fn(settings, "some-key")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    with pytest.raises(TrackingError, match="cannot reach MLflow"):
        check_reachable(settings)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "7"
    assert "MLFLOW_HTTP_REQUEST_TIMEOUT" not in os.environ


def test_a_run_while_another_holds_the_project_fails_in_one_line_and_changes_nothing(  # type: ignore[no-untyped-def]
    versioned: Path,
    tiny_bert_dir: Path,
    prefect_env,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A manual run while a scheduled one trains would close its live runs and share its checkpoints."""
    from test_project_lock import start_holder

    project = tmp_path / "project"
    shutil.copytree(versioned, project)
    (tmp_path / "new.csv").write_bytes(csv(make_demo_frame(60, 5)))
    before = data_state(project)
    holder = start_holder(project)
    try:
        args = [*tiny_args(tiny_bert_dir), "--data", str(tmp_path / "new.csv")]
        proc = bitune_run(project, args, prefect_env)
    finally:
        holder.kill()
        holder.wait()
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not PREFECT_INFO.match(line)]
    assert len(lines) == 2 and "another retrain of this project is running" in lines[0], lines
    assert f"pid {holder.pid}" in lines[0]
    assert data_state(project) == before
    assert not (project / "mlflow.db").exists()
