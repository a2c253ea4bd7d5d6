"""The promotion gate on its own: metrics in, decision and reasons out."""

from __future__ import annotations

import pytest

from bitune.params import RegistryParams
from bitune.promotion import decide, decide_on_stored_scores

F1, CKA = "test/macro_f1", "test/cka_to_pretrained"
RULES = RegistryParams()


def scores(f1: float, cka: float | None = None) -> dict[str, float]:
    return {F1: f1, "test/accuracy": f1} | ({CKA: cka} if cka is not None else {})


def test_no_champion_promotes() -> None:
    decision = decide(scores(0.1), None, RULES)
    assert decision.promote and decision.reasons == ["no champion yet"]
    assert decision.summary() == "promote: no champion yet"


def test_better_challenger_promotes_and_says_by_how_much() -> None:
    decision = decide(scores(0.80), scores(0.75), RULES)
    assert decision.promote
    assert "0.8000 vs champion 0.7500" in decision.reasons[0] and "+0.0500" in decision.reasons[0]


@pytest.mark.parametrize("challenger", [0.70, 0.75])
def test_worse_or_equal_challenger_keeps_champion(challenger: float) -> None:
    decision = decide(scores(challenger), scores(0.75), RULES)
    assert not decision.promote
    assert decision.summary().startswith("keep champion: test/macro_f1")


def test_gain_within_min_delta_keeps_champion_and_gain_of_min_delta_promotes() -> None:
    rules = RegistryParams(min_delta=0.1)
    assert not decide(scores(0.65), scores(0.6), rules).promote
    # 0.7 - 0.6 is 0.09999999999999998 in floats: a gain of exactly min_delta still counts
    decision = decide(scores(0.7), scores(0.6), rules)
    assert decision.promote and "needs >= +0.1000" in decision.reasons[0]


def test_cka_regression_blocks_a_better_score() -> None:
    decision = decide(scores(0.9, cka=0.80), scores(0.7, cka=0.95), RULES)
    assert not decision.promote
    assert "CKA to pretrained fell by +0.1500" in decision.reasons[1]
    assert "more forgetting than allowed" in decision.reasons[1]


def test_cka_drop_within_allowance_promotes() -> None:
    decision = decide(scores(0.9, cka=0.93), scores(0.7, cka=0.95), RULES)
    assert decision.promote and "allowed 0.0500)" in decision.reasons[1]


def test_cka_is_ignored_when_one_side_lacks_it() -> None:
    assert decide(scores(0.9), scores(0.7, cka=0.99), RULES).promote


@pytest.mark.parametrize(
    ("challenger", "champion", "side"),
    [
        ({"test/accuracy": 0.9}, scores(0.7), "challenger"),
        (scores(0.9), {"test/accuracy": 0.7}, "champion"),
    ],
)
def test_missing_metric_keeps_champion_and_names_the_side(
    challenger: dict[str, float], champion: dict[str, float], side: str
) -> None:
    decision = decide(challenger, champion, RULES)
    assert not decision.promote
    assert decision.reasons == [
        f"metric test/macro_f1 missing on {side}; set registry.metric to a logged test metric"
    ]


def test_gate_compares_the_configured_metric() -> None:
    rules = RegistryParams(metric="test/accuracy")
    challenger = {"test/accuracy": 0.9, F1: 0.1}
    assert decide(challenger, {"test/accuracy": 0.8, F1: 0.9}, rules).promote


def test_stored_scores_on_different_data_versions_do_not_compare() -> None:
    decision = decide_on_stored_scores(scores(0.9), scores(0.1), RULES, "aaaaaaaa11.dir", "bbbbbbbb22.dir")
    assert not decision.promote
    assert "different data versions (aaaaaaaa vs champion bbbbbbbb)" in decision.reasons[0]
    assert "--force" in decision.reasons[0]


def test_stored_scores_on_the_same_data_version_go_through_the_gate() -> None:
    assert decide_on_stored_scores(scores(0.9), scores(0.1), RULES, "a.dir", "a.dir").promote
    assert not decide_on_stored_scores(scores(0.1), scores(0.9), RULES, "a.dir", "a.dir").promote
    # no champion: nothing to compare against, whatever its data
    assert decide_on_stored_scores(scores(0.1), None, RULES, "a.dir", None).promote
