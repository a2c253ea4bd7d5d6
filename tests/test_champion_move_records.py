"""A champion move as a record, without a registry: its tag round-trips, stays within MLflow's limits,
and its description lines say what happened, the newest kept when the description is full."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from bitune.champion_moves import (
    MAX_TEXT,
    MOVE_PREFIX,
    MOVES_HEADING,
    PROMOTE,
    REGISTRATION,
    ROLLBACK,
    ChampionMove,
    became_line,
    moves_in,
    next_move_number,
    stopped_line,
    with_move_line,
)

AT = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)


def move(
    number: int = 3, action: str = PROMOTE, why: str = "better", run_id: str | None = None
) -> ChampionMove:
    return ChampionMove(number, AT, action, "1", "2", "ana", why, run_id)


def test_a_move_round_trips_through_its_tag() -> None:
    for original in (move(), move(action=REGISTRATION, run_id="abc"), move(action=ROLLBACK)):
        assert original.key == f"{MOVE_PREFIX}0003"
        assert ChampionMove.from_tag(original.key, original.tag_value()) == original


def test_the_tag_leaves_out_what_the_key_says_and_an_absent_run() -> None:
    assert json.loads(move().tag_value()) == {
        "at": "2025-03-04T05:06:07Z",
        "action": "promote",
        "from": "1",
        "to": "2",
        "by": "ana",
        "why": "better",
    }


def test_a_long_reason_gives_way_in_the_tag() -> None:
    value = move(why="reason " * 2000).tag_value()
    assert len(value) <= MAX_TEXT and json.loads(value)["why"].endswith("…")


def test_tags_that_are_not_moves_are_skipped_and_moves_come_oldest_first() -> None:
    tags = {
        move(12).key: move(12).tag_value(),
        move(2).key: move(2).tag_value(),
        f"{MOVE_PREFIX}0005": "edited by hand",
        "other.tag": "x",
    }
    assert ChampionMove.from_tag(f"{MOVE_PREFIX}0005", "edited by hand") is None
    assert [m.number for m in moves_in(tags)] == [2, 12]
    assert next_move_number(tags) == 13
    assert next_move_number({}) == 1


def test_description_lines_say_how_the_alias_moved() -> None:
    assert became_line(move()) == (
        "**2025-03-04 05:06 UTC**: became **champion** by manual promote, replacing version 1 (ana): better"
    )
    assert stopped_line(move(action=ROLLBACK)) == (
        "**2025-03-04 05:06 UTC**: no longer champion, rolled back to version 2 (ana): better"
    )
    assert "promoted by the gate at registration" in stopped_line(move(action=REGISTRATION))
    assert became_line(move(why="w" * 1000)).endswith("w…")  # the full reason is in the tag


def test_the_newest_line_is_the_one_kept() -> None:
    assert with_move_line("head", "new").endswith("\n- new")
    assert with_move_line("", "first") == f"{MOVES_HEADING}\n- first"
    crowded = with_move_line("head", "x" * 4970)
    assert len(crowded) <= MAX_TEXT and crowded.endswith("x")
    assert with_move_line(crowded, "newest") == f"head\n\n{MOVES_HEADING}\n- newest"
