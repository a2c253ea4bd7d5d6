"""Every move of the `champion` alias, kept where an MLflow user looks for it.

An alias holds one version and MLflow keeps no record of where it was before, and the version tags
(`bitune.previous_champion`, `bitune.promotion`) are overwritten by the next move. So each move also
writes one registered-model tag, `bitune.champion.move.0001`, `...0002`, ...: JSON with when, from and
to which version, who, how (registration gate, manual promote, rollback) and why. One small tag per
move, append-only, rather than one tag that grows past MLflow's value limits; the registered model's
page lists them in order and `bitune history` prints them. The versions' descriptions (and their runs'
descriptions, which repeat them) get a dated line for each move too, so they never contradict the alias.

Plain functions over an MlflowClient, no torch or Prefect: `bitune history` must start in a second.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from tasks.tracking import source_tags

CHAMPION = "champion"
PREVIOUS = "bitune.previous_champion"
PROMOTION = "bitune.promotion"
MOVE_PREFIX = "bitune.champion.move."
RUN_NOTE = "mlflow.note.content"  # the run page's Description
MAX_TEXT = 5000  # MLflow's description column, and a tag value every backend stores
MAX_WHY_IN_DESCRIPTION = 400  # the full reason is in the move's tag and the version's tags
MOVES_HEADING = "Champion moves:"
REGISTRATION, PROMOTE, ROLLBACK = "registration", "promote", "rollback"


@dataclass(frozen=True)
class ChampionMove:
    """One move of `champion`: `from_version` None when the registry had no champion."""

    number: int
    at: datetime  # UTC
    action: str  # REGISTRATION (the flow's gate), PROMOTE (`bitune promote`), ROLLBACK
    from_version: str | None
    to_version: str
    by: str
    why: str
    run_id: str | None = None  # the parent run that registered `to_version`, for REGISTRATION

    @property
    def key(self) -> str:
        return f"{MOVE_PREFIX}{self.number:04d}"

    def as_dict(self) -> dict[str, str | int | None]:
        return {
            "move": self.number,
            "at": self.at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "action": self.action,
            "from": self.from_version,
            "to": self.to_version,
            "by": self.by,
            "why": self.why,
            "run_id": self.run_id,
        }

    def tag_value(self) -> str:
        """Compact JSON under MAX_TEXT characters: the reason is what gives way."""
        fields = self.as_dict()
        fields.pop("move")  # the key says it
        if fields["run_id"] is None:
            fields.pop("run_id")
        text = json.dumps(fields, ensure_ascii=False)
        if len(text) > MAX_TEXT:
            fields["why"] = self.why[: max(0, len(self.why) - (len(text) - MAX_TEXT) - 1)] + "…"
            text = json.dumps(fields, ensure_ascii=False)
        return text

    @classmethod
    def from_tag(cls, key: str, value: str) -> ChampionMove | None:
        """The move a tag records; None for a tag that is not one (edited by hand, another tool's)."""
        number = key.removeprefix(MOVE_PREFIX)
        try:
            fields = json.loads(value)
            at = datetime.strptime(fields["at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            return cls(
                number=int(number),
                at=at,
                action=str(fields["action"]),
                from_version=None if fields.get("from") is None else str(fields["from"]),
                to_version=str(fields["to"]),
                by=str(fields.get("by", "")),
                why=str(fields.get("why", "")),
                run_id=fields.get("run_id"),
            )
        except (ValueError, KeyError, TypeError):
            return None


def mover() -> str:
    """Who moves the alias: the MLflow user when the server asks for one, else the login name (as
    MLflow records a run's user)."""
    return os.environ.get("MLFLOW_TRACKING_USERNAME") or source_tags()["mlflow.user"]


def champion_history(client: MlflowClient, name: str) -> list[ChampionMove]:
    """Every recorded move of `name`'s champion, oldest first (moves before bitune recorded them are
    not there)."""
    tags = client.get_registered_model(name).tags
    moves = [ChampionMove.from_tag(k, v) for k, v in tags.items() if k.startswith(MOVE_PREFIX)]
    return sorted((m for m in moves if m is not None), key=lambda m: m.number)


def _next_number(client: MlflowClient, name: str) -> int:
    tags = client.get_registered_model(name).tags
    numbers = [k.removeprefix(MOVE_PREFIX) for k in tags if k.startswith(MOVE_PREFIX)]
    return 1 + max((int(n) for n in numbers if n.isdecimal()), default=0)


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
            client.set_model_version_tag(name, to_version, PREVIOUS, from_version)
        client.set_model_version_tag(name, to_version, PROMOTION, why[:MAX_TEXT])
    client.set_registered_model_alias(name, CHAMPION, to_version)
    move = ChampionMove(
        number=_next_number(client, name),
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


def _when(move: ChampionMove) -> str:
    return move.at.strftime("%Y-%m-%d %H:%M UTC")


def _short(why: str) -> str:
    return why if len(why) <= MAX_WHY_IN_DESCRIPTION else why[: MAX_WHY_IN_DESCRIPTION - 1] + "…"


def became_line(move: ChampionMove) -> str:
    how = {PROMOTE: "by manual promote", ROLLBACK: "again by rollback", REGISTRATION: "at registration"}
    replacing = f", replacing version {move.from_version}" if move.from_version else ""
    return (
        f"**{_when(move)}**: became **champion** {how.get(move.action, move.action)}{replacing} "
        f"({move.by}): {_short(move.why)}"
    )


def stopped_line(move: ChampionMove) -> str:
    how = {
        PROMOTE: f"version {move.to_version} promoted manually",
        ROLLBACK: f"rolled back to version {move.to_version}",
        REGISTRATION: f"version {move.to_version} promoted by the gate at registration",
    }
    return (
        f"**{_when(move)}**: no longer champion, {how.get(move.action, move.action)} "
        f"({move.by}): {_short(move.why)}"
    )


def with_move_line(description: str, line: str) -> str:
    """`description` with `line` appended under the moves heading; the oldest lines give way (then the
    registration text's tail) to stay within MAX_TEXT: the full record is in the history tags."""
    head, _, listed = (description or "").partition(f"\n\n{MOVES_HEADING}\n")
    if not listed and description.startswith(f"{MOVES_HEADING}\n"):  # a version with no description
        head, listed = "", description.removeprefix(f"{MOVES_HEADING}\n")
    lines = [*(x for x in listed.splitlines() if x.strip()), f"- {line}"]

    def joined() -> str:
        body = f"{MOVES_HEADING}\n" + "\n".join(lines)
        return f"{head}\n\n{body}" if head else body

    while len(joined()) > MAX_TEXT and len(lines) > 1:
        lines.pop(0)
    text = joined()
    if len(text) > MAX_TEXT:
        keep = max(0, len(head) - (len(text) - MAX_TEXT) - 1)
        head = head[:keep] + "…" if keep else ""
        text = joined()
    return text[:MAX_TEXT]


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
