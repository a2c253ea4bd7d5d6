"""Prefect's results stay in the project: nothing lands in ~/.prefect/storage.

Prefect writes a failed flow run's exception to its result storage whatever `persist_result` says,
by default to ~/.prefect/storage: outside the project, never cleaned, and on a shared machine
readable by the other users. Runs go through the CLI with a HOME of their own, so anything written
there is this run's.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_project, tiny_overrides

pytestmark = pytest.mark.slow

BITUNE = str(Path(sys.executable).with_name("bitune"))


def run_with_home(
    root: Path, home: Path, overrides: list[str], **env: str
) -> subprocess.CompletedProcess[str]:
    """`bitune run` with its own HOME (so its own ~/.prefect) and its own temporary Prefect server."""
    args = [BITUNE, "run", "--project", str(root)]
    for override in overrides:
        args += ["--set", override]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    return subprocess.run(
        args, capture_output=True, text=True, env=clean | {"HOME": str(home)} | env, timeout=400
    )


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def test_a_failed_run_writes_its_prefect_result_into_the_project(tmp_path: Path, tiny_bert_dir: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    root = make_project(tmp_path / "project", tiny_bert_dir)
    # fails inside the flow (preflight checks the layers against the model), after Prefect started it
    bad = [*tiny_overrides(tiny_bert_dir), "strategy.phases.1.train=[embeddings, 'layers[0:99]', head]"]
    failed = run_with_home(root, home, bad)
    assert failed.returncode == 2 and "error: strategy.phases.1.train: 'layers[0:99]'" in failed.stderr, (
        failed.stderr[-3000:]
    )
    assert (home / ".prefect" / "prefect.db").exists()  # Prefect did use this HOME
    assert files_under(home / ".prefect" / "storage") == []
    assert len(files_under(root / ".bitune" / "prefect-results")) == 1  # the failure's record, kept here


def test_a_completed_run_persists_no_results_even_when_prefect_is_told_to(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    """retrain needs none (no task retries or Prefect caching; resume is bitune's own): persist_result=False
    is set on the flow, so a machine-wide PREFECT_RESULTS_PERSIST_BY_DEFAULT=true writes nothing."""
    home = tmp_path / "home"
    home.mkdir()
    root = make_project(tmp_path / "project", tiny_bert_dir)
    done = run_with_home(root, home, tiny_overrides(tiny_bert_dir), PREFECT_RESULTS_PERSIST_BY_DEFAULT="true")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "promoted to champion" in done.stdout
    assert files_under(home / ".prefect" / "storage") == []
    assert files_under(root / ".bitune" / "prefect-results") == []
