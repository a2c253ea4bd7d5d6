"""`bitune promote | rollback | compare` on a real registry: two real flow runs, a good and a worse one.

Everything is read back through MlflowClient. Each test starts from the state the flow left
(champion version 1, challenger version 2, no rollback links), so tests do not depend on order.
"""

from __future__ import annotations

import json
import re
import socket
from datetime import datetime
from pathlib import Path

import pytest
from conftest import make_project, tiny_overrides
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from flows.cli import app

pytestmark = pytest.mark.slow

NAME = "bitune-classifier"
F1 = "test/macro_f1"
# The tiny random BERT learns the demo only a little: on 120 rows and a few epochs its test macro-F1
# can sit at chance, level with a model that did not train. More rows and head epochs give the good
# run a margin (≈ 0.53 against ≈ 0.33) that does not hang on which rows land in the test split.
GOOD = ["data.demo_rows=400", "strategy.phases.0.epochs=30", "strategy.phases.1.epochs=3"]
# One epoch per phase at a learning rate that barely moves anything: a genuinely worse model.
WORSE = [
    "strategy.phases.0.epochs=1",
    "strategy.phases.1.epochs=1",
    "strategy.phases.0.lr=1e-6",
    "strategy.phases.1.lr=1e-7",
]
RESET_TAGS = ("bitune.previous_champion", "bitune.manual_gate", "bitune.rolled_back", "bitune.restored")


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert_dir, prefect_db):  # type: ignore[no-untyped-def]
    from flows.retrain import retrain

    root = make_project(tmp_path_factory.mktemp("registry-project"), tiny_bert_dir)
    good = retrain(
        params_file="params/default.yaml",
        overrides=tiny_overrides(tiny_bert_dir) + GOOD,
        project_dir=str(root),
    )
    worse = retrain(
        params_file="params/default.yaml",
        overrides=tiny_overrides(tiny_bert_dir) + GOOD + WORSE,
        project_dir=str(root),
    )
    return root, good, worse


@pytest.fixture
def client(project) -> MlflowClient:  # type: ignore[no-untyped-def]
    """The project's registry, put back to what the two flow runs left."""
    root = project[0]
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow_client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mlflow_client.set_registered_model_alias(NAME, "champion", "1")
    for version in ("1", "2"):
        tags = mlflow_client.get_model_version(NAME, version).tags
        for tag in RESET_TAGS:
            if tag in tags:
                mlflow_client.delete_model_version_tag(NAME, version, tag)
    return mlflow_client


def bitune(root: Path, *args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [*args, "--project", str(root)], env={"COLUMNS": "200", **(env or {})})


def champion(client: MlflowClient) -> str:
    return str(client.get_model_version_by_alias(NAME, "champion").version)


def one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    """Exit status 2 and one error line (plus the pointer to the log), no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("(details in "), lines
    assert "Traceback" not in result.output
    return lines[0]


def test_parent_run_carries_the_test_scores(project, client) -> None:  # type: ignore[no-untyped-def]
    _, good, _ = project
    metrics = client.get_run(good.run_id).data.metrics
    for key in ("test/accuracy", F1, "test/cka_to_pretrained"):
        assert metrics[key] == pytest.approx(good.test_metrics[key])


def test_flow_keeps_the_champion_over_a_worse_challenger(project, client) -> None:  # type: ignore[no-untyped-def]
    _, good, worse = project
    assert worse.test_metrics[F1] < good.test_metrics[F1]
    assert worse.model_version == "2" and not worse.promoted and worse.champion_version == "1"
    assert champion(client) == "1"
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "2"
    gate = client.get_model_version(NAME, "2").tags["bitune.gate"]
    # the champion was re-scored on the same test split, so its score is the one the first run logged
    assert gate.startswith(
        f"keep champion: {F1} {worse.test_metrics[F1]:.4f} vs champion {good.test_metrics[F1]:.4f}"
    )
    assert "(gain -" in gate


def test_promote_of_a_worse_version_is_refused_without_force(project, client) -> None:  # type: ignore[no-untyped-def]
    root = project[0]
    line = one_line_error(bitune(root, "promote", "2"))
    assert line.startswith(
        "error: promote: the gate kept version 1 as champion over version 2 (test/macro_f1"
    )
    assert "use --force" in line
    assert champion(client) == "1"
    tags = client.get_model_version(NAME, "2").tags
    assert tags["bitune.manual_gate"].startswith("keep champion: test/macro_f1")
    assert "bitune.previous_champion" not in tags


def test_forced_promote_then_rollback_restores_the_previous_champion(project, client) -> None:  # type: ignore[no-untyped-def]
    root = project[0]
    result = bitune(root, "promote", "2", "--force")
    assert result.exit_code == 0, result.output
    assert "now version 2 (was version 1)" in result.stdout
    assert champion(client) == "2"
    tags = client.get_model_version(NAME, "2").tags
    assert tags["bitune.previous_champion"] == "1"
    assert tags["bitune.promotion"] == "manual promote: forced with --force, gate not checked"
    assert str(client.get_model_version_by_alias(NAME, "challenger").version) == "2"  # other aliases stay

    result = bitune(root, "rollback")
    assert result.exit_code == 0, result.output
    assert "version 1 again (version 2 keeps its alias challenger)." in result.stdout
    assert champion(client) == "1"
    assert client.get_model_version(NAME, "2").tags["bitune.rolled_back"] == "replaced by version 1"
    restored = client.get_model_version(NAME, "1").tags
    assert restored["bitune.restored"] == "rollback from version 2"
    assert restored["bitune.promotion"] == "promote: no champion yet"  # why it first became champion survives

    # version 1 replaced no earlier champion: nothing further back, and nothing moves
    line = one_line_error(bitune(root, "rollback"))
    assert "champion version 1 of bitune-classifier replaced no earlier champion" in line
    assert champion(client) == "1"


def test_promote_through_the_gate_moves_the_champion_and_records_why(project, client) -> None:  # type: ignore[no-untyped-def]
    root, good, worse = project
    client.set_registered_model_alias(
        NAME, "champion", "2"
    )  # a worse champion, as after a bad manual promote
    result = bitune(root, "promote", "1")
    assert result.exit_code == 0, result.output
    assert champion(client) == "1"
    tags = client.get_model_version(NAME, "1").tags
    assert tags["bitune.previous_champion"] == "2"
    expected = f"promote: {F1} {good.test_metrics[F1]:.4f} vs champion {worse.test_metrics[F1]:.4f}"
    assert tags["bitune.manual_gate"].startswith(expected)
    assert tags["bitune.promotion"] == f"manual {tags['bitune.manual_gate']}"

    result = bitune(root, "rollback")
    assert result.exit_code == 0, result.output
    assert champion(client) == "2"
    # version 1 held only `champion` (`challenger` is on 2): no word of aliases it would keep
    assert result.stdout.strip() == "Rolled back: champion of bitune-classifier is version 2 again."


def test_promote_refuses_scores_on_different_test_rows(project, client) -> None:  # type: ignore[no-untyped-def]
    root = project[0]
    split = client.get_model_version(NAME, "1").tags["bitune.test_split"]
    # same data, same data.split: both versions record the same test rows
    assert len(split) == 16 and client.get_model_version(NAME, "2").tags["bitune.test_split"] == split
    client.set_registered_model_alias(NAME, "champion", "2")
    client.set_model_version_tag(NAME, "2", "bitune.test_split", "0123456789abcdef")  # as after a re-split
    prepared, away = root / ".bitune" / "prepared", root / ".bitune" / "prepared-away"
    try:
        prepared.rename(
            away
        )  # no test split on this machine to re-score both on (tests/test_promote_rescore.py)
        try:
            line = one_line_error(bitune(root, "promote", "1"))
        finally:
            away.rename(prepared)
        assert "scored on different test rows (version 1 on split " + split in line
        assert "champion version 2 on 0123456789abcdef" in line and "--force" in line
        assert champion(client) == "2"
        # a version from before the tag: compared as before, on the same data version, and the reason says so
        client.delete_model_version_tag(NAME, "2", "bitune.test_split")
        result = bitune(root, "promote", "1")
        assert result.exit_code == 0, result.output
        assert champion(client) == "1"
        gate = client.get_model_version(NAME, "1").tags["bitune.manual_gate"]
        assert gate.startswith("promote: version 2 kept no record of its test rows")
    finally:
        client.set_model_version_tag(NAME, "2", "bitune.test_split", split)


def test_promote_of_the_champion_or_an_unknown_version(project, client) -> None:  # type: ignore[no-untyped-def]
    root = project[0]
    result = bitune(root, "promote", "1")
    assert result.exit_code == 0 and "already the champion" in result.stdout
    line = one_line_error(bitune(root, "promote", "7"))
    assert line.startswith("error: registry: bitune-classifier has no version 7; `bitune compare` lists")
    assert champion(client) == "1"
    for typed in ("abc", "1.5", "2b", "v"):  # the user's slip, not a server fault; MLflow is not asked
        line = one_line_error(bitune(root, "promote", typed))
        expected = f"promote: version {typed!r} is not a version number; `bitune compare` lists the versions"
        assert line == f"error: {expected}"
    assert "bitune.manual_gate" not in client.get_model_version(NAME, "1").tags
    result = bitune(root, "promote", "v1")  # as `bitune compare` shows versions
    assert result.exit_code == 0 and "Version 1 of bitune-classifier is already the champion" in result.stdout


def test_compare_lists_every_run_with_scores_versions_and_aliases(project, client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    root, good, worse = project
    plot = tmp_path / "runs.png"
    result = bitune(root, "compare", "--plot", str(plot), env={"COLUMNS": "80"})  # a default terminal
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in result.stdout, result.stdout
    table = lines[: lines.index("params that differ:")]
    listed = lines[
        len(table) + 1 : next(i for i, line in enumerate(lines) if line.startswith("Plot written"))
    ]
    # both runs have one name (strategy + data version): the short run id tells them apart
    assert good.run_id[:8] != worse.run_id[:8]
    for summary, model in ((good, "v1 champion"), (worse, "v2 challenger")):
        (row,) = [line for line in table if line.startswith(summary.run_id[:8] + " ")]
        assert "bidirectional" in row and summary.data_version[:8] in row and row.rstrip().endswith(model)
        assert re.search(rf" \d+:\d\d {model}$", row.rstrip()), row  # the time as m:ss
        for key in ("test/accuracy", F1, "test/cka_to_pretrained"):
            assert f"{summary.test_metrics[key]:.4f}" in row
    assert [line[:8] for line in table if line[:8] in (good.run_id[:8], worse.run_id[:8])] == [
        good.run_id[:8],
        worse.run_id[:8],
    ]  # oldest first
    # the two runs differ in four params: too wide for a column at 80, so listed under the table
    assert " ".join(listed).split() == [
        good.run_id[:8],
        "strategy.phases.0.epochs=30",
        "strategy.phases.0.lr=0.003",
        "strategy.phases.1.epochs=3",
        "strategy.phases.1.lr=0.00015",
        worse.run_id[:8],
        "strategy.phases.0.epochs=1",
        "strategy.phases.0.lr=1e-06",
        "strategy.phases.1.epochs=1",
        "strategy.phases.1.lr=1e-07",
    ]
    assert plot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and plot.stat().st_size > 5000

    line = one_line_error(bitune(root, "compare", "--experiment", "nope"))
    assert line.startswith("error: compare: no experiment 'nope'")


def test_data_versions_show_the_rows_the_runs_logged_and_the_full_date(project) -> None:  # type: ignore[no-untyped-def]
    root, good, _ = project
    result = bitune(root, "data", "versions", "--json")
    assert result.exit_code == 0, result.output
    (listed,) = json.loads(result.stdout)
    assert listed["md5"].startswith(good.data_version) and listed["rows"] == 400  # data.demo_rows
    result = bitune(root, "data", "versions", env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    when = datetime.fromisoformat(listed["first_seen"]).astimezone().strftime("%Y-%m-%d %H:%M")
    (row,) = [line for line in result.stdout.splitlines() if listed["md5"] in line]
    assert f"{listed['md5']} {when}  400 " in row, result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80 and "…" not in result.stdout


def test_unreachable_tracking_server_is_one_line(project) -> None:  # type: ignore[no-untyped-def]
    root = project[0]
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}
    for command in (["compare"], ["rollback"], ["promote", "1"]):
        line = one_line_error(bitune(root, *command, env=env))
        assert line.startswith(f"error: MLFLOW_TRACKING_URI: cannot reach MLflow at http://127.0.0.1:{port}")
