"""A bad row in a data/ the user manages (`data.source: data`) fails `bitune run` in its early check, as a
bad `--data` file does: one line naming the file, the row and the fix, exit 2, before Prefect starts,
with data/, data.dvc, the DVC cache and remote and MLflow untouched. The data step keeps its own check
(scheduled runs skip the command line), and says the very same line.

Real git + DVC projects and real `bitune run` subprocesses. PREFECT_API_URL points at a port where no
server listens: a run that got past the early checks fails on it, which is how these tests tell "failed
before Prefect" from "failed in the flow" without timing anything.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_project
from project_state import data_state

from bitune.data.demo import make_demo_frame
from bitune.errors import DataError
from bitune.params import DataParams
from tasks.data import version_data_fn

pytestmark = pytest.mark.slow

LABELS = ["negative", "positive"]
NO_PREFECT = "PREFECT_API_URL: no Prefect server answers"


def dead_url() -> str:
    """An API address nothing answers at: a port just bound and released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/api"


def bitune_run(root: Path, model_dir: Path, *sets: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env |= {"PREFECT_API_URL": dead_url(), "HF_HUB_OFFLINE": "1"}
    args = [a for s in (f"model.name_or_path={model_dir}", "data.source=data", *sets) for a in ("--set", s)]
    return subprocess.run(
        [str(Path(sys.executable).parent / "bitune"), "run", "--project", str(root), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def blank_text(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[6, "text"] = "   "
    return frame


def misspelt_label(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[9, "label"] = "postive"
    return frame


def no_label_column(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.rename(columns={"label": "stars"})


# (edit of data/reviews.csv, extra --set, the one line expected); rows count the header as row 1
CASES: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], list[str], str]] = {
    "blank-text": (
        blank_text,
        [],
        "data/: missing or blank text at row 8; fill in or remove those rows",
    ),
    "label-not-allowed": (
        misspelt_label,
        ["data.labels=[negative, positive]"],
        "data/: labels not in data.labels ['negative', 'positive']: 'postive' (row 11); fix those rows "
        "or add the labels to data.labels",
    ),
    "missing-column": (
        no_label_column,
        [],
        "reviews.csv: no column 'label' (data.label_column); columns found: text, stars; set "
        "data.label_column to one of them",
    ),
}


@pytest.fixture
def managed(tmp_path: Path) -> Path:
    """A project whose data/ the user manages: reviews.csv, versioned once and committed."""
    root = make_project(tmp_path / "project", Path())
    (root / "data").mkdir()
    make_demo_frame(60, 5).to_csv(root / "data" / "reviews.csv", index=False)
    version_data_fn(DataParams(source="data"), root)
    subprocess.run(["git", "add", "data.dvc", ".gitignore"], cwd=root, check=True)
    subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "data"], cwd=root, check=True
    )
    return root


def edit(root: Path, change: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    path = root / "data" / "reviews.csv"
    change(pd.read_csv(path, dtype=str, keep_default_na=False)).to_csv(path, index=False)


def refused_in_one_line(proc: subprocess.CompletedProcess[str], root: Path, message: str) -> None:
    """Exit 2, `error: <message>` and the log line, nothing else: the early check, not the flow."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert lines == [f"error: {message}", f"(details in {root / '.bitune' / 'logs' / 'bitune.log'})"]
    assert NO_PREFECT not in proc.stderr and "Traceback" not in proc.stdout + proc.stderr
    assert not (root / "mlflow.db").exists() and not (root / "mlruns").exists()


@pytest.mark.parametrize("case", CASES)
def test_a_bad_row_in_data_fails_before_prefect_and_changes_nothing(
    case: str, managed: Path, tiny_bert_dir: Path
) -> None:
    change, sets, message = CASES[case]
    edit(managed, change)
    before = data_state(managed)
    proc = bitune_run(managed, tiny_bert_dir, *sets)
    refused_in_one_line(proc, managed, message)
    assert data_state(managed) == before  # data/ as edited, data.dvc, cache, remote: all as they were

    # the data step, which a scheduled run reaches without the command line, says the same line
    labels = {"labels": LABELS} if sets else {}
    with pytest.raises(DataError) as in_flow:
        version_data_fn(DataParams(source="data", **labels), managed)  # type: ignore[arg-type]
    assert str(in_flow.value) == message
    assert data_state(managed) == before


def test_good_edits_in_data_pass_the_early_check(managed: Path, tiny_bert_dir: Path) -> None:
    """The control for the cases above: valid data/ gets as far as Prefect (absent here)."""
    edit(
        managed, lambda frame: pd.concat([frame, pd.DataFrame({"text": ["one more"], "label": ["positive"]})])
    )
    before = data_state(managed)
    proc = bitune_run(managed, tiny_bert_dir, "data.labels=[negative, positive]")
    assert proc.returncode == 2 and NO_PREFECT in proc.stderr, proc.stderr[-3000:]
    assert data_state(managed) == before  # not versioned yet: that is the flow's first step


def test_a_first_run_on_a_bad_data_folder_creates_no_dvc_repo(tmp_path: Path, tiny_bert_dir: Path) -> None:
    """No data.dvc yet: the user filled data/ and runs with data.source=data for the first time."""
    root = make_project(tmp_path / "project", Path())
    (root / "data").mkdir()
    blank_text(make_demo_frame(60, 5)).to_csv(root / "data" / "reviews.csv", index=False)
    files = {p.name: p.read_bytes() for p in (root / "data").iterdir()}
    proc = bitune_run(root, tiny_bert_dir)
    refused_in_one_line(proc, root, CASES["blank-text"][2])
    assert {p.name: p.read_bytes() for p in (root / "data").iterdir()} == files
    assert sorted(p.name for p in root.iterdir()) == [
        ".bitune",
        ".git",
        "data",
        "params",
    ]  # no .dvc, data.dvc


def test_the_default_source_on_a_hand_edited_data_folder_is_refused_early(
    managed: Path, tiny_bert_dir: Path
) -> None:
    """Without data.source=data, data/ edited by hand is no data version: the data step's refusal, said
    by the early check (the same decision, `source_to_version`), before Prefect."""
    edit(managed, blank_text)
    before = data_state(managed)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "bitune"), "run", "--project", str(managed)]
        + ["--set", f"model.name_or_path={tiny_bert_dir}"],
        env=env | {"PREFECT_API_URL": dead_url()},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2 and NO_PREFECT not in proc.stderr, proc.stderr[-3000:]
    assert "error: data/ holds data version " in proc.stderr and "but data.dvc records" in proc.stderr
    assert data_state(managed) == before and not (managed / "mlflow.db").exists()


def test_a_data_dvc_left_in_conflict_by_a_merge_is_one_line(managed: Path, tiny_bert_dir: Path) -> None:
    """Two clones versioned data and a `git merge` left conflict markers in data.dvc: the early check
    reads it first, and says so in one line (as `bitune data versions` does), not with a traceback."""
    ours = (managed / "data.dvc").read_text()
    theirs = ours.replace(ours.split("md5: ")[1][:32], "0123456789abcdef0123456789abcdef")
    (managed / "data.dvc").write_text(f"<<<<<<< HEAD\n{ours}=======\n{theirs}>>>>>>> theirs\n")
    before = data_state(managed)
    fix = "if a git merge left conflict markers in it, keep one side (`git checkout --ours data.dvc` or "
    for proc in (
        bitune_run(managed, tiny_bert_dir),
        subprocess.run(
            [str(Path(sys.executable).parent / "bitune"), "data", "versions", "--project", str(managed)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        ),
    ):
        first, *_ = proc.stderr.splitlines() or [""]
        assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
        assert first.startswith(f"error: {managed / 'data.dvc'}: not a DVC file bitune can read (")
        assert first.endswith(f"{fix}--theirs), then run again"), first
    assert data_state(managed) == before and not (managed / "mlflow.db").exists()
