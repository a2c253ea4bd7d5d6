"""Every move of `champion` stays readable: the flow's promotions, `bitune promote` and `bitune rollback`
each add one registered-model tag (`bitune.champion.move.NNNN`) and a dated line on the descriptions of
the versions that gained or lost the alias, and `bitune history` lists them.

A real project folder and MLflow SQLite store; no model files, since no move reads them: the versions are
registered from parent runs that carry the test scores a manual promote compares.
"""

from __future__ import annotations

import getpass
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import make_project
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from bitune.champion_moves import MAX_TEXT, MOVE_PREFIX, MOVES_HEADING, ChampionMove
from bitune.params import load_params
from flows.cli import app
from tasks import tracking
from tasks.promotion import promote, rollback
from tasks.registry import set_champion
from tasks.tracking import TrackingSettings

NAME = "bitune-classifier"
MD5 = "0123456789abcdef0123456789abcdef.dir"


@dataclass(frozen=True)
class Registry:
    root: Path
    settings: TrackingSettings
    runs: dict[str, str]  # version to the parent run that registered it

    def client(self) -> MlflowClient:
        return self.settings.client()


def register_version(registry: Registry, f1: float) -> str:
    """A version as the flow leaves it: a parent run with test scores, a described version."""
    client = registry.client()
    run = tracking.start_run(registry.settings, "retrain", {"bitune.phase": "retrain"})
    tracking.log_metrics(registry.settings, run, {"test/macro_f1": f1, "test/cka_to_pretrained": 0.9})
    folder = registry.root / "models" / run
    folder.mkdir(parents=True)
    mv = client.create_model_version(
        NAME,
        source=folder.as_uri(),
        run_id=run,
        tags={"bitune.data_version": MD5, "bitune.test_split": "same-rows"},
    )
    number = str(mv.version)
    text = f"{NAME} version {number}, kept as **challenger** at registration."
    client.update_model_version(NAME, number, description=text)
    client.set_tag(run, "mlflow.note.content", f"{text}\n\nModel: `models:/{NAME}/{number}`")
    registry.runs[number] = run
    return number


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    root = make_project(tmp_path / "project", Path())
    settings = TrackingSettings.from_params(load_params(root / "params" / "default.yaml").tracking, root)
    settings.client().create_registered_model(NAME)
    return Registry(root, settings, {})


def moves(client: MlflowClient) -> list[ChampionMove]:
    tags = client.get_registered_model(NAME).tags
    found = [ChampionMove.from_tag(k, v) for k, v in sorted(tags.items()) if k.startswith(MOVE_PREFIX)]
    assert all(m is not None for m in found), tags
    return [m for m in found if m is not None]


def bitune(root: Path, *args: str, columns: int = 200):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [*args, "--project", str(root)], env={"COLUMNS": str(columns)})


def test_every_move_of_the_champion_is_kept_in_order(registry: Registry) -> None:
    client = registry.client()
    params = load_params(registry.root / "params" / "default.yaml")
    one, two, three = (register_version(registry, f1) for f1 in (0.5, 0.6, 0.4))
    set_champion(registry.settings, NAME, one, None, "promote: no champion yet", registry.runs[one])
    set_champion(registry.settings, NAME, two, one, "promote: test/macro_f1 0.6 vs 0.5", registry.runs[two])
    promote(registry.settings, params, three, force=True)
    rollback(registry.settings, NAME)  # back to 2
    rollback(registry.settings, NAME)  # back to 1
    promote(registry.settings, params, two, root=registry.root)  # through the gate: 0.6 beats 0.5

    assert str(client.get_model_version_by_alias(NAME, "champion").version) == two
    tags = client.get_registered_model(NAME).tags
    assert sorted(k for k in tags if k.startswith(MOVE_PREFIX)) == [
        f"{MOVE_PREFIX}{n:04d}" for n in range(1, 7)
    ]
    got = [(m.number, m.action, m.from_version, m.to_version) for m in moves(client)]
    assert got == [
        (1, "registration", None, one),
        (2, "registration", one, two),
        (3, "promote", two, three),
        (4, "rollback", three, two),
        (5, "rollback", two, one),
        (6, "promote", one, two),
    ]
    history = moves(client)
    assert {m.by for m in history} == {getpass.getuser()}
    assert [m.run_id for m in history[:2]] == [registry.runs[one], registry.runs[two]]
    assert history[2].why == "manual promote: forced with --force, gate not checked"
    assert history[3].why == f"rollback: version {three} had replaced version {two}"
    assert history[5].why.startswith("manual promote: test/macro_f1 0.6000 vs champion 0.5000")
    assert history[0].at <= history[-1].at
    # the version tags `bitune rollback` reads are as before
    assert client.get_model_version(NAME, three).tags["bitune.previous_champion"] == two
    assert client.get_model_version(NAME, two).tags["bitune.previous_champion"] == one


def test_the_versions_descriptions_follow_the_alias(registry: Registry) -> None:
    client = registry.client()
    params = load_params(registry.root / "params" / "default.yaml")
    one, two = register_version(registry, 0.5), register_version(registry, 0.6)
    set_champion(registry.settings, NAME, one, None, "promote: no champion yet", registry.runs[one])
    registered = client.get_model_version(NAME, one).description
    assert MOVES_HEADING not in registered  # the registration text already says it became champion

    promote(registry.settings, params, two, force=True)
    became = client.get_model_version(NAME, two).description.splitlines()
    assert became[0] == f"{NAME} version {two}, kept as **challenger** at registration."
    assert became[-2] == MOVES_HEADING
    assert became[-1].endswith(
        f": became **champion** by manual promote, replacing version {one} ({getpass.getuser()}): "
        "manual promote: forced with --force, gate not checked"
    )
    lost = client.get_model_version(NAME, one).description
    assert lost.startswith(registered)
    assert lost.splitlines()[-1].endswith(
        f": no longer champion, version {two} promoted manually ({getpass.getuser()}): "
        "manual promote: forced with --force, gate not checked"
    )

    rollback(registry.settings, NAME)
    back = client.get_model_version(NAME, one).description.splitlines()
    assert back[-1].startswith("- **")
    assert f"became **champion** again by rollback, replacing version {two}" in back[-1]
    assert f"no longer champion, version {two} promoted manually" in back[-2]  # the earlier line stays
    dropped = client.get_model_version(NAME, two).description
    assert f"no longer champion, rolled back to version {one}" in dropped
    # each run's description repeats its version's, so the run page does not contradict it either
    for version in (one, two):
        note = client.get_run(registry.runs[version]).data.tags["mlflow.note.content"]
        described = client.get_model_version(NAME, version).description
        assert note == f"{described}\n\nModel: `models:/{NAME}/{version}`"


def test_long_reasons_and_many_moves_stay_within_mlflows_limits(registry: Registry) -> None:
    client = registry.client()
    one, two = register_version(registry, 0.5), register_version(registry, 0.6)
    why = "promote: " + "very long reason " * 1000
    set_champion(registry.settings, NAME, one, None, why)
    for _ in range(20):
        set_champion(registry.settings, NAME, two, one, why)
        set_champion(registry.settings, NAME, one, two, why)
    tags = client.get_registered_model(NAME).tags
    history = [v for k, v in tags.items() if k.startswith(MOVE_PREFIX)]
    assert len(history) == 41 and max(len(v) for v in history) <= MAX_TEXT
    assert json.loads(history[-1])["why"].endswith("…")
    for version in (one, two):
        text = client.get_model_version(NAME, version).description
        assert len(text) <= MAX_TEXT
        assert text.startswith(f"{NAME} version {version}, kept as **challenger** at registration.")


def test_bitune_history_lists_the_moves(registry: Registry) -> None:
    empty = bitune(registry.root, "history")
    assert empty.exit_code == 0, empty.output
    assert empty.stdout.strip() == f"No champion moves recorded for {NAME} yet; `bitune run` registers one."

    one, two = register_version(registry, 0.5), register_version(registry, 0.6)
    set_champion(registry.settings, NAME, one, None, "promote: no champion yet", registry.runs[one])
    params = load_params(registry.root / "params" / "default.yaml")
    promote(registry.settings, params, two, force=True)
    rollback(registry.settings, NAME)

    result = bitune(registry.root, "history", columns=80)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, result.stdout
    user = getpass.getuser()
    rows = [line.split() for line in lines if line[:1].isdigit()]  # wrapped reasons are indented
    assert [r[:7] for r in rows] == [
        ["1", *rows[0][1:3], "-", "→", f"v{one}", "gate"],
        ["2", *rows[1][1:3], f"v{one}", "→", f"v{two}", "promote"],
        ["3", *rows[2][1:3], f"v{two}", "→", f"v{one}", "rollback"],
    ]
    assert all(r[7] == user for r in rows)
    # back on the first champion, which replaced none: `bitune rollback` would refuse, so no offer
    assert lines[-1] == f"Champion now: version {one}."

    listed = json.loads(bitune(registry.root, "history", "--json").stdout)
    assert [(m["move"], m["action"], m["from"], m["to"]) for m in listed] == [
        (1, "registration", None, one),
        (2, "promote", one, two),
        (3, "rollback", two, one),
    ]
    assert listed[0]["run_id"] == registry.runs[one] and listed[1]["why"].startswith("manual promote")
    promote(registry.settings, params, two, force=True)
    again = bitune(registry.root, "history", columns=200).stdout.splitlines()[-1]
    assert again == f"Champion now: version {two}. bitune rollback makes version {one} champion again."


def test_history_of_a_model_that_is_not_registered_is_one_line(registry: Registry) -> None:
    registry.client().delete_registered_model(NAME)
    result = bitune(registry.root, "history")
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[0]
    assert line.startswith(f"error: history: no registered model '{NAME}' at sqlite:///")
    assert line.endswith("`bitune run` registers one (or check registry.model_name)")
