"""An experiment whose artifact folder can no longer be written: refused before the data step.

An MLflow experiment keeps the artifact location it was created with, whatever
tracking.artifact_location says now, so the CLI's check of that key does not cover it. When the
folder had since become a file, `bitune run` versioned new data first and only then failed, at the
parent run's first artifact. The preflight now checks the experiment's own folder, creating nothing.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from conftest import make_project
from project_state import data_state
from test_bad_inputs import PREFECT_INFO, bitune_run, csv, prefect_env, tiny_args  # noqa: F401

from bitune.data.demo import make_demo_frame
from bitune.errors import ParamsError, TrackingError
from tasks.tracking import TrackingSettings, check_artifact_folder, check_store

EXPERIMENT = "bitune"  # params/default.yaml tracking.experiment


def store(root: Path) -> TrackingSettings:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return TrackingSettings(uri=uri, experiment=EXPERIMENT, artifact_location=None)


def create_experiment(root: Path, location: str) -> None:
    from mlflow.tracking import MlflowClient

    MlflowClient(tracking_uri=store(root).uri).create_experiment(EXPERIMENT, artifact_location=location)


def runs_and_champion(root: Path) -> tuple[list[tuple[str, str]], object]:
    with sqlite3.connect(f"file:{root / 'mlflow.db'}?mode=ro", uri=True) as db:
        runs = db.execute("select run_uuid, status from runs order by run_uuid").fetchall()
        champion = db.execute(
            "select version from registered_model_aliases where alias = 'champion'"
        ).fetchone()
    return runs, champion


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert_dir, prefect_env) -> Path:  # type: ignore[no-untyped-def]  # noqa: F811
    """A project after one good run into an experiment created with its artifacts in `old-artifacts`
    (tracking.artifact_location has since moved on to `mlartifacts`): champion version 1."""
    root = make_project(tmp_path_factory.mktemp("project"), tiny_bert_dir)
    create_experiment(root, (root / "old-artifacts").as_uri())
    proc = bitune_run(root, tiny_args(tiny_bert_dir), prefect_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any((root / "old-artifacts").rglob("params.resolved.json"))  # the run wrote there
    assert runs_and_champion(root)[1] == (1,)
    return root


@pytest.mark.slow
def test_a_run_into_an_experiment_whose_artifact_folder_is_now_a_file_changes_nothing(  # type: ignore[no-untyped-def]
    trained: Path,
    tiny_bert_dir: Path,
    prefect_env,  # noqa: F811 - the fixture imported from test_bad_inputs: one Prefect server
    tmp_path: Path,
) -> None:
    folder = trained / "old-artifacts"
    check_artifact_folder(store(trained))  # as the first run left it, the folder passes
    shutil.rmtree(folder)
    folder.write_text("a file where the experiment's artifact folder was")
    (tmp_path / "new.csv").write_bytes(csv(make_demo_frame(60, 8)))  # would be a new data version
    before, mlflow_before = data_state(trained), runs_and_champion(trained)

    args = [*tiny_args(tiny_bert_dir), "--force", "--data", str(tmp_path / "new.csv")]
    proc = bitune_run(trained, args, prefect_env)

    assert proc.returncode == 2, proc.stderr[-3000:]
    assert data_state(trained) == before  # data.dvc byte for byte, data/, cache, remote
    assert runs_and_champion(trained) == mlflow_before  # no new run, the champion still version 1
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not PREFECT_INFO.match(line)]
    assert len(lines) == 2 and lines[1].startswith("(details in "), proc.stderr
    assert lines[0] == (
        f"error: tracking.experiment: experiment 'bitune' keeps its artifacts in {folder}, where they "
        f"cannot be written ({folder} is a file, not a folder); make that folder writable, or set "
        "tracking.experiment to a new experiment name"
    )
    assert folder.read_text() == "a file where the experiment's artifact folder was"


def test_a_file_above_the_artifact_folder_is_named(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.write_text("a file where a folder above the artifacts was")
    create_experiment(tmp_path, str(shared / "artifacts"))  # a plain path, not a file: URI
    with pytest.raises(TrackingError) as raised:
        check_artifact_folder(store(tmp_path))
    assert str(raised.value) == (
        f"tracking.experiment: experiment 'bitune' keeps its artifacts in {shared / 'artifacts'}, "
        f"where they cannot be written ({shared} is a file, not a folder); make that folder "
        "writable, or set tracking.experiment to a new experiment name"
    )


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_no_store_yet_passes_and_creates_none(tmp_path: Path) -> None:
    check_artifact_folder(store(tmp_path))
    assert listing(tmp_path) == []  # no mlflow.db: the first run creates it


def test_a_folder_the_first_artifact_will_create_passes_and_is_not_created(tmp_path: Path) -> None:
    create_experiment(tmp_path, (tmp_path / "later" / "artifacts").as_uri())
    before = listing(tmp_path)
    check_artifact_folder(store(tmp_path))
    assert listing(tmp_path) == before == ["mlflow.db"]  # neither `later` nor `later/artifacts`


@pytest.mark.parametrize("location", ["s3://bucket/artifacts", "mlflow-artifacts:/artifacts"])
def test_remote_artifact_stores_are_not_checked_as_folders(
    location: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read as a local path, either location would be relative, below `s3:` or `mlflow-artifacts:`:
    files by those names in the working folder would fail it."""
    create_experiment(tmp_path, location)
    monkeypatch.chdir(tmp_path)
    for name in ("s3:", "mlflow-artifacts:"):
        (tmp_path / name).write_text("not a folder")
    check_artifact_folder(store(tmp_path))


def test_a_store_not_made_yet_is_judged_by_its_folder_and_nothing_is_created(tmp_path: Path) -> None:
    """Opening a SQLite store creates it, so the preflight checks only whether MLflow could."""
    later = TrackingSettings(
        uri=f"sqlite:///{tmp_path / 'a' / 'b' / 'mlflow.db'}", experiment=EXPERIMENT, artifact_location=None
    )
    check_store(later)
    assert listing(tmp_path) == []
    (tmp_path / "afile").write_text("a file where the store's folder should be")
    under_a_file = TrackingSettings(
        uri=f"sqlite:///{tmp_path / 'afile' / 'mlflow.db'}", experiment=EXPERIMENT, artifact_location=None
    )
    with pytest.raises(
        ParamsError, match=r"^tracking.uri: .*afile is a file, not a folder; point tracking.uri at a"
    ):
        check_store(under_a_file)
    assert listing(tmp_path) == ["afile"]
