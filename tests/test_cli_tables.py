"""What `bitune compare` and `bitune data versions` print: one time format, the params that tell runs
apart, full dates, all within 80 columns.

The compare tests write parent runs into a real MLflow SQLite store the way the flow tags them (no
training: the table only reads tags, params, metrics and times), so durations and params are exact.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import make_project
from mlflow.tracking import MlflowClient
from rich.console import Console
from typer.testing import CliRunner

from bitune.evaluation.run_comparison import (
    MAX_PARAMS_SHOWN,
    RunRow,
    differing_params,
    duration_text,
    param_differences,
)
from flows.cli import app
from flows.cli_data import versions_table
from tasks.dvc_store import KnownVersion

BASE = {
    "strategy.name": "bidirectional",
    "strategy.phases.0.epochs": "3",
    "strategy.phases.1.epochs": "2",
    "strategy.phases.1.lr": "5e-05",
    "model.dropout": "0.1",
    "data.version": "aaaa.dir",
}


def row(run_id: str, params: dict[str, str], seconds: float | None = 1.0) -> RunRow:
    return RunRow(run_id, run_id, "FINISHED", "bidirectional", "aaaa", {}, seconds, None, [], params)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "-"), (0.4, "0:00"), (4.4, "0:04"), (59.6, "1:00"), (93.3, "1:33"), (168.0, "2:48"),
     (3599.4, "59:59"), (3725.0, "1:02:05")],
)  # fmt: skip
def test_durations_are_one_clock_format(seconds: float | None, shown: str) -> None:
    assert duration_text(seconds) == shown


def test_only_params_that_differ_are_listed_as_set_takes_them() -> None:
    rows = [
        row("r1", BASE),
        row("r2", BASE | {"strategy.phases.1.epochs": "6", "data.version": "bbbb.dir"}),
        row("r3", {}),  # killed before it logged params: neither compared nor making every key differ
        row("r4", BASE | {"strategy.name": "top_down", "model.revision": "main"}),
    ]
    # strategy.name and data.version have columns of their own; a key only some runs logged differs
    assert differing_params(rows) == ["model.revision", "strategy.phases.1.epochs"]
    # each run shows only where it departs from what most runs logged
    assert param_differences(rows) == {
        "r1": "(common)",
        "r2": "strategy.phases.1.epochs=6",
        "r3": "?",
        "r4": "model.revision=main",
    }
    assert param_differences([row("r1", BASE), row("r2", BASE), row("r3", {})]) == {}


def test_runs_of_one_data_version_differ_in_no_source_keys() -> None:
    """`--data reviews.csv --set data.text_column=review`, then a plain run reading the same version
    from data/: both trained on the same rows, which the source keys would say they did not."""
    versioned = BASE | {"data.source": "reviews.csv", "data.text_column": "review"}
    plain = BASE | {"data.source": "data", "data.text_column": "text"}
    assert differing_params([row("r1", versioned), row("r2", plain)]) == []
    tweets = BASE | {"data.source": "tweets.csv", "data.text_column": "text", "data.version": "bbbb.dir"}
    other = RunRow("r3", "r3", "FINISHED", "bidirectional", "bbbb", {}, 1.0, None, [], tweets)
    assert differing_params([row("r1", versioned), row("r2", plain), other]) == [
        "data.source",
        "data.text_column",
    ]


def test_one_changed_key_is_not_lost_among_another_presets_keys() -> None:
    """A run of another strategy differs in every phase key; the strategy column says so already."""
    preset = {f"strategy.phases.{i}.lr": "0.001" for i in range(12)} | {"strategy.name": "full"}
    rows = [
        row("r1", BASE),
        row("r2", BASE | {"strategy.phases.1.train": "[layers[0:2]]"}),
        row("r3", BASE | preset),
        row("r4", BASE),
    ]
    assert param_differences(rows) == {
        "r1": "(common)",
        "r2": "strategy.phases.1.train=[layers[0:2]]",
        "r3": "(common)",  # its preset's keys are left out: the strategy column shows `full`
        "r4": "(common)",
    }
    # two runs, no majority: both show the key, each with its own value
    two = param_differences([row("r1", BASE), row("r2", BASE | {"model.dropout": "0.3"})])
    assert two == {"r1": "model.dropout=0.1", "r2": "model.dropout=0.3"}


def test_a_key_set_on_a_run_of_another_preset_is_shown_against_that_preset() -> None:
    """`--set strategy=lp_ft --set strategy.rounds=2` among bidirectional runs read `(common)`."""
    lp_ft = {f"strategy.phases.{i}.lr": "0.001" for i in range(4)} | {"strategy.name": "lp_ft"}
    rows = [
        row("r1", BASE),
        row("r2", BASE | lp_ft | {"strategy.rounds": "2"}),
        row("r3", BASE),
    ]
    presets = {"lp_ft": lp_ft | {"strategy.rounds": "1"}}
    assert param_differences(rows, presets)["r2"] == "strategy.rounds=2"
    assert param_differences(rows)["r2"] == "(common)"  # no preset known: its strategy keys are left out


def test_long_values_and_many_keys_are_shortened() -> None:
    many = {f"k.{i:02d}": "1" for i in range(MAX_PARAMS_SHOWN + 3)}
    long = "/a/very/long/path/to/a/model/folder/that/goes/on/and/on"
    rows = [
        row("r1", many | {"model.name_or_path": long, "strategy.phases.1.train": "[head, pooler]"}),
        row("r2", {k: "2" for k in many} | {"model.name_or_path": "m", "strategy.phases.1.train": "[head]"}),
    ]
    text = param_differences(rows)["r1"]
    assert text.endswith("(+5 more)") and text.count("=") == MAX_PARAMS_SHOWN
    assert "k.00=1" in text and "k.07=1" in text and "k.08" not in text
    few = [row(r.run_id, {k: v for k, v in r.params.items() if not k.startswith("k.")}) for r in rows]
    assert param_differences(few)["r1"] == (
        "model.name_or_path=/a/very/long/path/to/a/model/folder/tha… "  # 40 characters
        'strategy.phases.1.train="[head, pooler]"'  # spaces quoted: one piece each
    )


def store_with_runs(root: Path, runs: list[tuple[dict[str, str], float]]) -> list[str]:
    """Parent runs as the flow leaves them (tags, params, scores, start and end), plus a nested run
    with other params that compare must not count; run ids oldest first."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("bitune", artifact_location=(root / "mlartifacts").as_uri())
    start = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
    ids = []
    for i, (params, seconds) in enumerate(runs):
        tags = {
            "bitune.pipeline": "retrain",
            "bitune.strategy": "bidirectional",
            "bitune.data_version": "d" * 32,
        }
        run = client.create_run(
            experiment, start_time=start + i * 600_000, tags=tags, run_name="bidirectional"
        )
        for key, value in params.items():
            client.log_param(run.info.run_id, key, value)
        for key in ("test/accuracy", "test/macro_f1", "test/cka_to_pretrained"):
            client.log_metric(run.info.run_id, key, 0.5 + i / 10)
        client.set_terminated(run.info.run_id, end_time=start + i * 600_000 + int(seconds * 1000))
        ids.append(run.info.run_id)
    child_tags = {"bitune.pipeline": "retrain", "mlflow.parentRunId": ids[0]}
    child = client.create_run(experiment, start_time=start, tags=child_tags)
    client.log_param(child.info.run_id, "phase.lr", "0.1")
    return ids


def compare(root: Path, columns: int) -> list[str]:
    result = CliRunner().invoke(app, ["compare", "--project", str(root)], env={"COLUMNS": str(columns)})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= columns, result.stdout
    return lines


def test_compare_names_the_params_that_differ_and_times_runs_alike(tmp_path: Path) -> None:
    root = make_project(tmp_path / "project", Path())
    two = store_with_runs(root, [(BASE, 93.3), (BASE | {"strategy.phases.1.epochs": "6"}, 168.0)])
    (first, second) = (run_id[:8] for run_id in two)

    narrow = compare(root, 80)  # a default terminal: the table as before, the differences under it
    header = next(line for line in narrow if line.startswith("run "))
    assert "differs" not in header and "time" in header
    assert re.search(rf"^{first} .* 1:33 FINISHED\s*$", "\n".join(narrow), re.M)
    assert re.search(rf"^{second} .* 2:48 FINISHED\s*$", "\n".join(narrow), re.M)
    listed = narrow[narrow.index("params that differ:") + 1 :]
    assert [line.rstrip() for line in listed] == [
        f"{first} strategy.phases.1.epochs=2",
        f"{second} strategy.phases.1.epochs=6",
    ]

    wide = compare(root, 120)  # room for a last column: the differences sit on each run's row
    assert wide[1].split() == ["run", "strategy", "data", "acc", "F1", "CKA", "time", "result", "differs"]
    assert (
        next(line for line in wide if line.startswith(first))
        .rstrip()
        .endswith("1:33 FINISHED strategy.phases.1.epochs=2")
    )
    assert "params that differ:" not in wide


def test_compare_of_runs_with_the_same_params_adds_nothing(tmp_path: Path) -> None:
    root = make_project(tmp_path / "project", Path())
    store_with_runs(root, [(BASE, 5.0), (BASE | {"data.version": "other.dir"}, 5.0)])
    for columns in (80, 200):
        lines = compare(root, columns)
        assert "params that differ:" not in lines and "differs" not in lines[1]


def test_data_versions_table_shows_the_full_date_and_rows_in_80_columns() -> None:
    known = [
        KnownVersion(
            "0123456789abcdef0123456789abcdef.dir",
            datetime(2026, 11, 26, 23, 7, tzinfo=UTC),
            ["git", "remote", "mlflow"],
            [".bitune-demo.json", "demo.csv"],
            in_remote=True,
        ),
        KnownVersion("f" * 32 + ".dir", None, ["git"], None, in_remote=False, current=True),
    ]
    console = Console(width=80, record=True, color_system=None)
    console.print(versions_table(known, {known[0].md5: 400}, "data versions (/some/remote)"))
    text = console.export_text()
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in text, text
    first = next(line for line in lines if known[0].md5 in line)
    when = known[0].first_seen.astimezone().strftime("%Y-%m-%d %H:%M")  # type: ignore[union-attr]
    assert f"{known[0].md5} {when}  400 " in first
    second = next(line for line in lines if known[1].md5 in line)
    assert second.startswith("* ") and re.search(r"\.dir\s+\?\s+\?\s+\?\s+git \(not", second), second
    assert "(not in the remote)" in " ".join(text.split())
