"""`bitune compare | promote | rollback | serve | ui` on a project whose MLflow store is damaged or was
never created: one line, exit status 2, and the store (or its absence) left exactly as it was.

Found in the bad-input audit: a damaged mlflow.db was "unexpected DatabaseError ... a bug in bitune"
with exit 1, and a project that never ran got an empty mlflow.db created by the command (with
MLflow's "Creating initial MLflow database tables" lines) before a misleading "no champion" error.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

COMMANDS = [["compare"], ["rollback"], ["promote", "1"], ["serve"], ["ui"], ["history"]]
MODEL = "bitune-classifier"  # params/default.yaml registry.model_name


def bitune(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "bitune"), *args, "--project", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def new_project(root: Path) -> Path:
    root.mkdir()
    shutil.copytree(REPO / "params", root / "params")
    return root


def listing(root: Path) -> dict[str, bytes]:
    """Every file under the project but the error log, with its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.relative_to(root).parts[0] == ".bitune"
    }


def only_the_log(root: Path) -> None:
    """The one thing a refused command may write: its details, in the project's log."""
    written = sorted(str(p.relative_to(root)) for p in (root / ".bitune").rglob("*") if p.is_file())
    assert written == [".bitune/logs/bitune.log"], written


@pytest.fixture(scope="module")
def real_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real MLflow SQLite store with what the registry commands read: a bitune parent run, two
    registered versions, the champion alias on version 2, which replaced version 1."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("bitune", artifact_location=(folder / "artifacts").as_uri())
    run = client.create_run(experiment, tags={"bitune.pipeline": "retrain"})
    client.set_terminated(run.info.run_id)
    client.create_registered_model(MODEL)
    for _ in range(2):
        client.create_model_version(MODEL, f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_model_version_tag(MODEL, "2", "bitune.previous_champion", "1")
    client.set_registered_model_alias(MODEL, "champion", "2")
    return folder / "mlflow.db"


def damage_tables(db: Path, tables: tuple[str, ...]) -> None:
    """Overwrite the root pages of `tables` with junk, keeping the header and the schema page readable:
    the store opens, and the damage shows only when a command reads those tables."""
    with sqlite3.connect(db) as conn:
        page_size = conn.execute("pragma page_size").fetchone()[0]
        pages = [
            conn.execute("select rootpage from sqlite_master where name = ?", (t,)).fetchone()[0]
            for t in tables
        ]
    conn.close()
    data = bytearray(db.read_bytes())
    for page in pages:
        start = (page - 1) * page_size
        data[start : start + page_size] = b"\xff" * page_size
    db.write_bytes(bytes(data))


def damaged_line(db: Path, reason: str) -> str:
    return (
        f"error: tracking.uri: the MLflow store sqlite:///{db} is damaged ({reason}); restore the file "
        "from a backup, or move it aside to start an empty store"
    )


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_store_of_random_bytes_is_named_damaged_and_not_written(tmp_path: Path, command: list[str]) -> None:
    root = new_project(tmp_path / "project")
    (root / "mlflow.db").write_bytes(bytes(range(256)) * 32)  # not SQLite: its header is wrong
    before = listing(root)
    proc = bitune(root, *command)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[0] == damaged_line(root / "mlflow.db", "file is not a database")
    assert "a bug in bitune" not in proc.stderr and "Traceback" not in proc.stderr
    assert listing(root) == before  # the damaged file is byte for byte as it was, nothing beside it
    only_the_log(root)


@pytest.mark.parametrize(
    ("command", "tables"),
    [
        (["compare"], ("experiments",)),  # the store check's own query hits it
        (["compare"], ("runs",)),
        (["rollback"], ("registered_model_aliases", "model_versions")),
        (["serve"], ("registered_model_aliases", "model_versions")),
        (["promote", "1"], ("model_versions",)),
        (["history"], ("registered_models", "registered_model_tags")),
    ],
    ids=["experiments", "compare", "rollback", "serve", "promote", "history"],
)
def test_a_store_damaged_past_its_header_is_named_damaged_when_a_table_is_read(
    tmp_path: Path, real_store: Path, command: list[str], tables: tuple[str, ...]
) -> None:
    root = new_project(tmp_path / "project")
    shutil.copy(real_store, root / "mlflow.db")
    damage_tables(root / "mlflow.db", tables)
    before = listing(root)
    proc = bitune(root, *command)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[0] == damaged_line(root / "mlflow.db", "database disk image is malformed")
    assert listing(root) == before


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_a_project_that_never_ran_gets_no_store(tmp_path: Path, command: list[str]) -> None:
    root = new_project(tmp_path / "project")
    before = listing(root)
    proc = bitune(root, *command)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[0] == (
        f"error: tracking.uri: no MLflow store at {root / 'mlflow.db'}, so no runs or models yet; run "
        "`bitune run` first (or pass --project / set MLFLOW_TRACKING_URI if they are elsewhere)"
    )
    assert "Creating initial MLflow database tables" not in proc.stdout + proc.stderr
    assert listing(root) == before  # no mlflow.db, no mlartifacts
    only_the_log(root)


def test_an_empty_store_file_is_no_store_and_stays_empty(tmp_path: Path) -> None:
    root = new_project(tmp_path / "project")
    (root / "mlflow.db").touch()  # `touch mlflow.db`: SQLite would take it for an empty database
    proc = bitune(root, "rollback")
    assert proc.returncode == 2, proc.stderr
    assert "no MLflow store at" in proc.stderr.splitlines()[0]
    assert (root / "mlflow.db").stat().st_size == 0


def test_the_real_store_works_before_it_is_damaged(tmp_path: Path, real_store: Path) -> None:
    """The damaged-store cases fail because of the damage, not because the store was never usable."""
    root = new_project(tmp_path / "project")
    shutil.copy(real_store, root / "mlflow.db")
    proc = bitune(root, "rollback")
    assert proc.returncode == 0, proc.stderr
    assert "champion of bitune-classifier is version 1 again" in proc.stdout
