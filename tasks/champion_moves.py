"""Every move of the `champion` alias, kept where an MLflow user looks for it.

An alias holds one version and MLflow keeps no record of where it was before, and the version tags
(`bitune.previous_champion`, `bitune.promotion`) are overwritten by the next move. So each move also
writes one registered-model tag (`bitune.champion_moves.ChampionMove`: when, from and to which version,
who, how and why), append-only, rather than one tag that grows past MLflow's value limits; the
registered model's page lists them in order and `bitune history` prints them. The versions'
descriptions (and their runs' descriptions, which repeat them) get a dated line for each move too, so
they never contradict the alias.

Plain functions over an MlflowClient, no torch or Prefect: `bitune history` must start in a second.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bitune.champion_moves import (
    MAX_TEXT,
    REGISTRATION,
    ROLLBACK,
    ChampionMove,
    became_line,
    moves_in,
    next_move_number,
    stopped_line,
    with_move_line,
)
from bitune.tag_names import PREVIOUS_CHAMPION, PROMOTION
from tasks.tracking import source_tags

CHAMPION = "champion"
RUN_NOTE = "mlflow.note.content"  # the run page's Description


def mover() -> str:
    """Who moves the alias: the MLflow user when the server asks for one, else the login name (as
    MLflow records a run's user)."""
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or source_tags()["mlflow.user"]


def champion_history(client: MlflowClient, name: str) -> list[ChampionMove]:
    """Every recorded move of `name`'s champion, oldest first (moves before bitune recorded them are
    not there)."""
    return moves_in(client.get_registered_model(name).tags)


def move_champion(
    client: MlflowClient,
    name: str,
    to_version: str,
    from_version: str | None,
    action: str,
    why: str,
    run_id: str | None = None,
) -> ChampionMove:
    """Move `champion` to `to_version` in one alias write, then record the move.

    A promotion (not a rollback) records the version it replaced on the new champion (what `bitune
    rollback` walks back) and why; a rollback leaves the restored version's own record, so a second
    rollback goes one step further back. The history tag and descriptions follow the alias write: the
    alias is the truth, and a record never claims a move that did not happen.
    """
    if action != ROLLBACK:
        if from_version:
            client.set_model_version_tag(name, to_version, PREVIOUS_CHAMPION, from_version)
        client.set_model_version_tag(name, to_version, PROMOTION, why[:MAX_TEXT])
    client.set_registered_model_alias(name, CHAMPION, to_version)
    move = ChampionMove(
        number=next_move_number(client.get_registered_model(name).tags),
        at=datetime.now(UTC).replace(microsecond=0),
        action=action,
        from_version=from_version,
        to_version=to_version,
        by=mover(),
        why=why,
        run_id=run_id,
    )
    client.set_registered_model_tag(name, move.key, move.tag_value())
    if action != REGISTRATION:  # at registration the new version's description already says it
        note_on_version(client, name, to_version, became_line(move))
    if from_version:
        note_on_version(client, name, from_version, stopped_line(move))
    return move


def note_on_version(client: MlflowClient, name: str, version: str, line: str) -> None:
    """Append `line` to the version's description and to its run's, which repeats it."""
    try:
        mv: ModelVersion = client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return  # deleted since: nothing to keep consistent
        raise
    text = with_move_line(mv.description or "", line)
    client.update_model_version(name, version, description=text)
    if mv.run_id:
        try:
            client.set_tag(mv.run_id, RUN_NOTE, f"{text}\n\nModel: `models:/{name}/{version}`")
        except MlflowException as exc:
            # a deleted run is not shown: its note need not follow (the version's description did)
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
