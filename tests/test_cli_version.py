"""`bitune --version`: what a bug report needs, from the installed distributions, without a project."""

from __future__ import annotations

import re
from importlib.metadata import version

from typer.testing import CliRunner

from flows.cli import REPORTED_VERSIONS, app


def test_version_names_bitune_and_the_libraries_it_leans_on(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)  # no project here: the version must not need one
    result = CliRunner().invoke(app, ["--version"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert line.startswith(f"bitune {version('bitune')} (") and "\n" not in line
    for name in REPORTED_VERSIONS:
        assert f"{name} {version(name)}" in line
    assert list(tmp_path.iterdir()) == []


COMMANDS = ["run", "promote", "rollback", "history", "compare", "ui", "serve", "schedule"]
COMMANDS += ["data versions", "data checkout", "data diff"]


def test_help_names_what_each_option_takes_not_its_python_type() -> None:
    """`--set <list[str]>` and `--force <bool>` read as if a flag took a value: help says KEY=VALUE,
    and a flag shows nothing. (Typer's own `--help` keeps its `<bool>`.)"""
    typed = re.compile(r"^\W*(--[a-z-]+)\s+<[a-z\[\] ]+>")
    for command in COMMANDS:
        result = CliRunner().invoke(app, [*command.split(), "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        shown = [m.group(1) for line in result.output.splitlines() if (m := typed.match(line))]
        assert shown == ["--help"], (command, result.output)
