"""`--project` naming no folder: every command says so in one line and creates nothing.

The log file of an error lives in the project (`.bitune/logs/`), so an error path that wrote it
would make the mistyped folder appear; and a missing folder is not a missing params file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app

COMMANDS = [
    ["run"],
    ["run", "--data", "reviews.csv", "--set", "train.seed=1"],
    ["compare"],
    ["promote", "1"],
    ["rollback"],
    ["history"],
    ["ui"],
    ["data", "versions"],
    ["data", "checkout", "abc123"],
    ["data", "diff", "abc123"],
    ["schedule", "--interval", "60"],
]
HINT = "pass the project folder (the one holding params/ and data.dvc)"


def bitune(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "300"})


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c[:2]) for c in COMMANDS])
def test_a_missing_project_folder_is_one_line_and_creates_nothing(command: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "nosuchproj"
    result = bitune(*command, "--project", str(missing))
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [f"error: --project {missing}: no such folder; {HINT}"]
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []  # not the folder, not its .bitune/logs


def test_a_file_as_the_project_is_named_as_not_a_folder(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "params.yaml"
    not_a_folder.write_text("strategy: bidirectional\n")
    result = bitune("compare", "--project", str(not_a_folder))
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"error: --project {not_a_folder}: not a folder; {HINT}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_an_existing_project_still_logs_the_error(tmp_path: Path) -> None:
    """The check only stops a missing folder: other errors keep their log and its pointer."""
    (tmp_path / "params").mkdir()  # a project (a clone's params/) that lacks its params file
    result = bitune("run", "--project", str(tmp_path))
    assert result.exit_code == 2, result.output
    error, details = result.stderr.strip().splitlines()
    params_file = tmp_path / "params" / "default.yaml"
    assert error == f"error: {params_file}: params file not found; pass an existing file with --params"
    assert details == f"(details in {tmp_path}/.bitune/logs/bitune.log)"
    assert "params file not found" in (tmp_path / ".bitune" / "logs" / "bitune.log").read_text()
