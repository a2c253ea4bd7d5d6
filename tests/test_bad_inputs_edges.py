"""Bad inputs a demanding user hits that the CLI catalogue (tests/test_bad_inputs.py) does not run
end to end: the exact one-line messages, and that nothing in the project changed.

Each case was found failing in an audit: a raw SQLAlchemy traceback for a damaged mlflow.db, DVC's
support link in place of its error, "unexpected FileNotFoundError ... a bug in bitune" for a
checkpoint folder that cannot be written, "choose one of " with nothing after it for a params file
copied away from its presets, a YAML error pointing past the file's last line.
"""

from __future__ import annotations

import errno
import logging
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from conftest import REPO, make_project

from bitune.errors import BituneError, ModelError, ParamsError, TrackingError
from bitune.params import DataParams, ModelParams, load_params
from bitune.params.folders import check_writable_folders

PARAMS = REPO / "params" / "default.yaml"
UNWRITABLE = Path("/proc/bitune-audit")  # /proc refuses new folders, even to root


def bitune(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "bitune"), *args, "--project", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- params files ---------------------------------------------------------------------------------


@pytest.fixture
def params_dir(tmp_path: Path) -> Path:
    shutil.copytree(PARAMS.parent, tmp_path / "params")
    return tmp_path / "params"


def test_a_tab_in_the_params_file_is_named_with_its_line(params_dir: Path) -> None:
    path = params_dir / "default.yaml"
    lines = path.read_text().splitlines(keepends=True)
    seed = next(i for i, line in enumerate(lines) if line.startswith("  seed:"))
    lines[seed] = "\t" + lines[seed].lstrip()
    path.write_text("".join(lines))
    with pytest.raises(ParamsError) as raised:
        load_params(path)
    assert str(raised.value) == (
        f"{path} line {seed + 1}: a tab character; YAML indents with spaces only, replace it"
    )


def test_an_unclosed_bracket_points_at_its_line_not_past_the_end(params_dir: Path) -> None:
    path = params_dir / "default.yaml"
    path.write_text("strategy: bidirectional\ndata:\n  labels: [positive, negative\n")
    with pytest.raises(ParamsError) as raised:
        load_params(path)
    assert str(raised.value) == (
        f"{path} line 3: not valid YAML (expected ',' or ']', but got '<stream end>'); fix the syntax there"
    )


@pytest.mark.parametrize("text", ["", "# every line commented out\n", "{}\n"])
def test_an_empty_params_file_is_refused(params_dir: Path, text: str) -> None:
    path = params_dir / "default.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError) as raised:
        load_params(path)
    assert str(raised.value) == (
        f"{path}: empty params file; copy params/default.yaml and edit it, or leave out --params"
    )


def test_a_params_file_away_from_its_presets_says_where_they_were_looked_for(tmp_path: Path) -> None:
    copied = tmp_path / "experiment.yaml"
    shutil.copy(PARAMS, copied)  # `cp params/default.yaml experiment.yaml`: strategies/ stays behind
    with pytest.raises(ParamsError) as raised:
        load_params(copied)
    assert str(raised.value) == (
        f"{copied}: strategy: preset 'bidirectional' not found, no {tmp_path / 'strategies'}/ folder of "
        "presets next to the params file; keep the file in params/ or copy strategies/ along"
    )


def test_a_folder_or_latin1_file_as_params_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"a folder, not a params file; pass a YAML file with --params$"):
        load_params(tmp_path)
    latin1 = tmp_path / "p.yaml"
    latin1.write_bytes("strategy: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ParamsError, match=r"p.yaml: not UTF-8 \(byte 0xe9\); save it as UTF-8$"):
        load_params(latin1)


# --- folders a run writes -------------------------------------------------------------------------


def test_an_unwritable_checkpoint_folder_fails_before_any_work(tmp_path: Path) -> None:
    params = load_params(PARAMS, [f"train.checkpoint_dir={UNWRITABLE}"])
    with pytest.raises(ParamsError) as raised:
        check_writable_folders(params, tmp_path)
    assert str(raised.value).startswith(f"train.checkpoint_dir: cannot write to {UNWRITABLE} (")
    assert str(raised.value).endswith("point train.checkpoint_dir at a writable folder")


def test_a_file_where_a_folder_should_be_and_a_local_artifact_root_are_checked(tmp_path: Path) -> None:
    (tmp_path / "features").write_text("a file")
    params = load_params(PARAMS, ["train.feature_cache_dir=features/cache"])
    with pytest.raises(ParamsError, match=r"^train.feature_cache_dir: .*features is a file, not a folder"):
        check_writable_folders(params, tmp_path)
    params = load_params(PARAMS, [f"tracking.artifact_location={UNWRITABLE}"])
    with pytest.raises(ParamsError, match=r"^tracking.artifact_location: cannot write to /proc"):
        check_writable_folders(params, tmp_path)
    check_writable_folders(params, tmp_path, tracking_server=True)  # a server keeps its own artifacts


def test_an_artifact_folder_that_is_a_file_says_the_experiment_keeps_its_folder(tmp_path: Path) -> None:
    """The advice was "point tracking.artifact_location at a folder": for the experiment the first run
    made, that alone was refused again, by the experiment's own artifact check."""
    (tmp_path / "mlartifacts").write_text("a file")
    params = load_params(PARAMS, ["tracking.artifact_location=mlartifacts"])
    with pytest.raises(ParamsError) as raised:
        check_writable_folders(params, tmp_path)
    assert str(raised.value) == (
        f"tracking.artifact_location: {tmp_path / 'mlartifacts'} is a file, not a folder; move it away, or "
        "point tracking.artifact_location at a writable folder and, for an experiment that exists already, "
        "set a new tracking.experiment too (an experiment keeps the folder it was created with)"
    )


def test_the_check_leaves_no_folder_it_created(tmp_path: Path) -> None:
    params = load_params(PARAMS, ["train.checkpoint_dir=deep/er/checkpoints"])
    check_writable_folders(params, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# --- model weights --------------------------------------------------------------------------------


def test_truncated_safetensors_weights_fail_the_model_check(tmp_path: Path) -> None:
    from tiny_models import save_tiny_bert

    from tasks.preprocess import check_model

    folder = save_tiny_bert(tmp_path / "cut-model")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
    with pytest.raises(ModelError) as raised:
        check_model(ModelParams(name_or_path=str(folder)))
    assert str(raised.value) == (
        f"model.name_or_path: {weights} is not a readable safetensors file (Error while deserializing "
        "header: incomplete metadata, file not fully covered); the file is probably truncated: copy or "
        "download it again, or save_pretrained the model anew"
    )


# --- stores ---------------------------------------------------------------------------------------


def test_a_damaged_mlflow_db_is_named_as_such_and_left_as_it_is(tmp_path: Path) -> None:
    from tasks.tracking import TrackingSettings, check_reachable

    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table t (x)")
    db.write_bytes(b"not a database, overwritten by accident".ljust(4096, b"\0"))
    before = db.read_bytes()
    settings = TrackingSettings(uri=f"sqlite:///{db}", experiment="bitune", artifact_location=None)
    with pytest.raises(TrackingError) as raised:
        check_reachable(settings)
    assert str(raised.value) == (
        f"tracking.uri: the MLflow store sqlite:///{db} is damaged (file is not a database); restore "
        "the file from a backup, or move it aside to start an empty store"
    )
    assert db.read_bytes() == before


def test_a_failed_push_names_dvcs_reason_not_its_support_link(tmp_path: Path) -> None:
    from bitune.errors import DataError
    from tasks import dvc_store
    from tasks.data import version_data_fn

    root = make_project(tmp_path / "project", Path())
    version_data_fn(DataParams(demo_rows=60), root)
    dvc_file = (root / "data.dvc").read_bytes()
    broken = tmp_path / "broken-remote"
    broken.mkdir()
    (broken / "files").write_text("a file where the remote needs a folder: every push fails")
    source = tmp_path / "new.csv"
    from bitune.data.demo import make_demo_frame

    make_demo_frame(60, 9).to_csv(source, index=False)
    with pytest.raises(DataError) as raised:
        version_data_fn(DataParams(source=str(source), remote=str(broken)), root)
    message = str(raised.value)
    assert message.startswith("cannot push data version ") and "files" in message, message
    assert "Having any troubles" not in message and "dvc.org/support" not in message
    assert not message.split("(", 1)[1].startswith("ERROR"), message
    assert (root / "data.dvc").read_bytes() == dvc_file
    with pytest.raises(DataError, match=r"^data.remote '.*empty.csv': .*empty.csv is a file, not a folder"):
        (tmp_path / "empty.csv").write_text("")
        dvc_store.ensure_repo(root, str(tmp_path / "empty.csv"))


def test_a_bad_checkout_version_on_a_new_project_writes_nothing(tmp_path: Path) -> None:
    root = make_project(tmp_path / "project", Path())
    before = sorted(p.name for p in root.iterdir())
    proc = bitune(root, "data", "checkout", "bogus")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[0] == (
        "error: data version 'bogus': no known data version starts with it; see `bitune data versions`"
    )
    assert sorted(p.name for p in root.iterdir() if p.name != ".bitune") == before  # no .dvc, remote


# --- the CLI's last line of defence ---------------------------------------------------------------


def run_in_one_line_errors(tmp_path: Path, exc: BaseException, capsys: pytest.CaptureFixture[str]) -> int:
    from flows.cli_errors import one_line_errors

    (tmp_path / "params").mkdir(exist_ok=True)  # a project folder: the one place the log is written
    try:
        with one_line_errors(tmp_path):
            raise exc
    except typer.Exit as ended:
        return int(ended.exit_code)
    return 0


def test_a_library_exception_in_a_command_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run_in_one_line_errors(tmp_path, RuntimeError("database is locked\nsecond line"), capsys)
    lines = capsys.readouterr().err.splitlines()
    assert code == 1
    assert lines[0] == (
        "error: unexpected RuntimeError: database is locked — a bug in bitune, not in your input; please "
        "report it with the log"
    )
    assert len(lines) == 2 and lines[1].startswith("(details in ")
    assert "Traceback" in (tmp_path / ".bitune" / "logs" / "bitune.log").read_text()


def test_a_disk_that_refuses_a_write_is_the_users_to_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    refused = OSError(errno.EROFS, "Read-only file system", "/mnt/ro/checkpoints/head")
    code = run_in_one_line_errors(tmp_path, refused, capsys)
    assert code == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        "error: cannot write /mnt/ro/checkpoints/head (Read-only file system); free disk space or fix "
        "the permissions there, then run again (a run resumes from its last checkpoint)"
    )


def test_typer_exits_and_user_errors_pass_through_unchanged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_in_one_line_errors(tmp_path, typer.Exit(3), capsys) == 3
    assert capsys.readouterr().err == ""
    assert run_in_one_line_errors(tmp_path, BituneError("x: fix it"), capsys) == 2
    assert capsys.readouterr().err.splitlines()[0] == "error: x: fix it"


def test_prefect_restating_any_error_stays_off_the_terminal() -> None:
    """An OSError's restatements quote its repr, not its str; they were three ERROR lines of noise."""
    from flows.console_logging import NoTraceback

    keep = NoTraceback()
    exc = FileNotFoundError(2, "No such file or directory")

    def record(message: str, with_exc: bool = False) -> logging.LogRecord:
        info = (type(exc), exc, None) if with_exc else None
        return logging.LogRecord("prefect.task_runs", logging.ERROR, "", 0, message, None, info)

    assert not keep.filter(record(f"Task run failed with exception: {exc!r}", with_exc=True))
    assert not keep.filter(record(f"Encountered exception during execution: {exc!r}"))
    assert keep.filter(record("Task run 'tune-head' - Finished in state Completed()"))


# --- data files -----------------------------------------------------------------------------------


def test_a_validation_error_names_the_file_its_rows_are_in(tmp_path: Path) -> None:
    """Row numbers alone left the user to guess which file: `--data` is often one of many exports."""
    from bitune.data.demo import make_demo_frame
    from bitune.data.versioning import check_new_source
    from bitune.errors import DataError

    (tmp_path / "header.csv").write_text("text,label\n")
    with pytest.raises(DataError) as raised:
        check_new_source(DataParams(source=str(tmp_path / "header.csv")), tmp_path)
    assert str(raised.value) == "header.csv: no data rows; the file has a header only — add rows"
    one_class = make_demo_frame(60, 5).assign(label="positive")
    (tmp_path / "exports").mkdir()
    one_class.to_csv(tmp_path / "exports" / "train.csv", index=False)
    with pytest.raises(DataError, match=r"^exports/: only one class \('positive'\)"):
        check_new_source(DataParams(source=str(tmp_path / "exports")), tmp_path)
