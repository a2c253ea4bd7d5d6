"""One move of the `champion` alias as a record: its registered-model tag and its description lines.

Each move is one tag, `bitune.champion.move.0001`, `...0002`, ...: compact JSON with when, from and to
which version, who, how (registration gate, manual promote, rollback) and why, within MLflow's value
limit. The versions' descriptions get a dated line per move under a heading, the oldest lines giving
way first. Pure: `tasks.champion_moves` reads and writes them through an MlflowClient.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from bitune.tag_names import CHAMPION_MOVE_PREFIX as MOVE_PREFIX

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


def moves_in(tags: Mapping[str, str]) -> list[ChampionMove]:
    """The moves a registered model's tags record, oldest first; tags that are not moves are skipped."""
    moves = [ChampionMove.from_tag(k, v) for k, v in tags.items() if k.startswith(MOVE_PREFIX)]
    return sorted((m for m in moves if m is not None), key=lambda m: m.number)


def next_move_number(tags: Mapping[str, str]) -> int:
    """The number of the next move: one past the highest recorded, unreadable records included."""
    numbers = [k.removeprefix(MOVE_PREFIX) for k in tags if k.startswith(MOVE_PREFIX)]
    return 1 + max((int(n) for n in numbers if n.isdecimal()), default=0)


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
