"""Run in the wrong folder, or with a strategy preset or an unquoted `layers[0:2]`: one line that says
what to do instead.

A README audit ran `cd docs && bitune run`: the error blamed `--params` for `docs/params/default.yaml`
and left `docs/.bitune/logs/bitune.log` behind in a folder that is no project.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_project
from typer.testing import CliRunner

from flows.cli import app


def bitune(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "300"})


@pytest.mark.parametrize("command", [["run"], ["history"], ["compare"]], ids=" ".join)
@pytest.mark.parametrize("subfolder", ["docs", "bitune"])
def test_a_subfolder_of_the_project_names_the_project_and_writes_nothing(
    command: list[str], subfolder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`bitune/` holds the Python package `bitune.params`: a params/ folder, but a package, not params.
    From there the error blamed --params and left `bitune/.bitune/logs` for git to show."""
    root = make_project(tmp_path / "project", Path())
    sub = root / subfolder
    sub.mkdir()
    if subfolder == "bitune":
        (sub / "params").mkdir()
        (sub / "params" / "__init__.py").write_text('"""Params models."""\n')
    held = sorted(sub.rglob("*"))
    monkeypatch.chdir(sub)
    result = bitune(*command)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"error: {sub}: not a bitune project folder (no params/ or data.dvc); run bitune from {root} or "
        f"pass --project {root}"
    ]
    assert sorted(sub.rglob("*")) == held  # no .bitune/logs in a folder that is no project


def test_a_folder_outside_any_project_says_to_pass_the_project(tmp_path: Path) -> None:
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    result = bitune("run", "--project", str(alone))
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"error: {alone}: not a bitune project folder (no params/ or data.dvc); run bitune from the "
        "project folder or pass --project DIR"
    ]
    assert list(alone.iterdir()) == []


def test_a_strategy_preset_as_the_params_file_suggests_set_strategy(tmp_path: Path) -> None:
    root = make_project(tmp_path / "project", Path())
    result = bitune("run", "--project", str(root), "--params", "params/strategies/full.yaml")
    assert result.exit_code == 2, result.output
    preset = root / "params" / "strategies" / "full.yaml"
    assert result.stderr.strip().splitlines()[0] == (
        f"error: --params {preset}: a strategy preset, not a params file; keep --params on a params file "
        "(params/default.yaml) and choose the preset with --set strategy=full"
    )
    assert "strategies/strategies" not in result.stderr


def test_an_unquoted_layer_slice_in_a_set_list_is_shown_quoted(tmp_path: Path) -> None:
    root = make_project(tmp_path / "project", Path())
    typed = "strategy.phases.1.train=[embeddings, layers[0:2], head]"
    result = bitune("run", "--project", str(root), "--set", typed)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[0] == (
        "error: --set strategy.phases.1.train: expected a list like [a, b], got "
        "'[embeddings, layers[0:2], head]'; quote items with brackets: [embeddings, 'layers[0:2]', head]"
    )
