"""The git state a run records: `git.dirty` says the project's code or params differ from the commit,
not that the run's own data step rewrote DVC's files (it runs before the MLflow run opens)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import make_project

from tasks.tracking import git_state


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=root, check=True)


def test_dvc_bookkeeping_is_not_dirty_and_an_edited_params_file_is(tmp_path: Path) -> None:
    root = make_project(tmp_path / "project", tmp_path)
    (root / "data.dvc").write_text("outs:\n- md5: 0123.dir\n  path: data\n")
    git(root, "add", "params", "data.dvc")
    git(root, "commit", "-q", "-m", "params and a data version")
    state = git_state(root)
    assert state["git.dirty"] == "false" and state["git.commit"] == state["mlflow.source.git.commit"]

    # `dvc init` stages .dvc/config and .dvcignore
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    (root / "data.dvc").write_text("outs:\n- md5: 4567.dir\n  path: data\n")  # a new data version
    (root / ".gitignore").write_text("/data\n")
    git(root, "add", ".gitignore")
    assert git_state(root)["git.dirty"] == "false"

    default = root / "params" / "default.yaml"
    default.write_text(default.read_text() + "\n# an uncommitted edit\n")
    assert git_state(root)["git.dirty"] == "true"


def test_a_folder_without_git_has_no_commit(tmp_path: Path) -> None:
    assert git_state(tmp_path) == {"git.commit": "none"}
