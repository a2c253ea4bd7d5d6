"""The promotion gate on its own: metrics in, decision and reasons out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bitune.errors import ParamsError
from bitune.evaluation.metrics import named_metrics
from bitune.evaluation.report import evaluate_predictions
from bitune.evaluation.unseen import GateRows
from bitune.params import GATE_METRICS, RegistryParams, load_params
from bitune.promotion import (
    ChampionOnTest,
    GateDecision,
    StoredScores,
    decide,
    decide_at_registration,
    decide_on_stored_scores,
    registration_text,
)

F1, CKA = "test/macro_f1", "test/cka_to_pretrained"
DEFAULTS = Path(__file__).resolve().parents[1] / "params" / "default.yaml"
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
    assert decision.reasons[1].startswith("CKA to pretrained fell by 0.1500 (allowed drop 0.0500")
    assert "more forgetting than allowed" in decision.reasons[1]


def test_cka_drop_within_allowance_promotes() -> None:
    decision = decide(scores(0.9, cka=0.93), scores(0.7, cka=0.95), RULES)
    assert (
        decision.promote and decision.reasons[1] == "CKA to pretrained fell by 0.0200 (allowed drop 0.0500)"
    )


@pytest.mark.parametrize(
    ("challenger", "words"),
    [(0.99, "CKA to pretrained rose by 0.0400"), (0.95 + 1e-6, "CKA to pretrained unchanged")],
)
def test_cka_rise_or_no_change_is_said_as_such(challenger: float, words: str) -> None:
    decision = decide(scores(0.9, cka=challenger), scores(0.7, cka=0.95), RULES)
    assert decision.promote and decision.reasons[1] == f"{words} (allowed drop 0.0500)"


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


def stored(version: str, f1: float, data: str | None, split: str | None) -> StoredScores:
    return StoredScores(version, scores(f1), data, split)


def test_stored_scores_on_different_data_versions_do_not_compare() -> None:
    decision = decide_on_stored_scores(
        stored("2", 0.9, "aaaaaaaa11.dir", None), stored("1", 0.1, "bbbbbbbb22.dir", None), RULES
    )
    assert not decision.promote
    assert "different data versions (aaaaaaaa vs champion bbbbbbbb)" in decision.reasons[0]
    assert "--force" in decision.reasons[0]


def test_stored_scores_on_the_same_data_version_go_through_the_gate_with_a_note() -> None:
    better = decide_on_stored_scores(stored("2", 0.9, "a.dir", None), stored("1", 0.1, "a.dir", "s1"), RULES)
    assert better.promote
    assert better.reasons[0].startswith("version 2 kept no record of its test rows")
    worse = decide_on_stored_scores(stored("2", 0.1, "a.dir", None), stored("1", 0.9, "a.dir", None), RULES)
    assert not worse.promote and worse.reasons[0].startswith("versions 2 and 1 kept no record of their")
    # no champion: nothing to compare against, whatever its data
    assert decide_on_stored_scores(stored("2", 0.1, "a.dir", None), None, RULES).promote


def test_stored_scores_on_the_same_test_rows_compare_across_data_versions() -> None:
    """Rows added to training only: the test rows, and so the comparison, are the same."""
    decision = decide_on_stored_scores(
        stored("2", 0.9, "new.dir", "s1"), stored("1", 0.1, "old.dir", "s1"), RULES
    )
    assert decision.promote and decision.reasons[0].startswith(f"{F1} 0.9000 vs champion 0.1000")
    assert not decide_on_stored_scores(
        stored("2", 0.1, "a.dir", "s1"), stored("1", 0.9, "a.dir", "s1"), RULES
    ).promote


def test_stored_scores_on_different_test_rows_do_not_compare_even_on_the_same_data() -> None:
    """A change of data.split: each version may have trained on the other's test rows."""
    decision = decide_on_stored_scores(
        stored("2", 0.9, "a.dir", "s2"), stored("1", 0.1, "a.dir", "s1"), RULES
    )
    assert not decision.promote
    assert decision.reasons[0].startswith(
        "scored on different test rows (version 2 on split s2, champion version 1 on s1"
    )
    assert "--force" in decision.reasons[0]


@pytest.mark.parametrize("metric", ["test/loss", "test/ece"])
def test_lower_is_better_metrics_promote_on_a_fall(metric: str) -> None:
    rules = RegistryParams(metric=metric)
    assert rules.mode == "min"
    decision = decide({metric: 0.30}, {metric: 0.40}, rules)
    assert decision.promote
    reason = f"{metric} 0.3000 vs champion 0.4000 (lower is better, gain +0.1000, needs > 0)"
    assert decision.reasons == [reason]
    assert not decide({metric: 0.40}, {metric: 0.30}, rules).promote
    assert not decide({metric: 0.30}, {metric: 0.30}, rules).promote


def test_min_delta_applies_in_the_metric_direction() -> None:
    rules = RegistryParams(metric="test/loss", min_delta=0.05)
    assert not decide({"test/loss": 0.37}, {"test/loss": 0.40}, rules).promote
    assert decide({"test/loss": 0.35}, {"test/loss": 0.40}, rules).promote
    assert not decide({"test/loss": 0.45}, {"test/loss": 0.40}, rules).promote


@pytest.mark.parametrize("metric", ["test/macro_f1", "test/accuracy", "test/f1/positive"])
def test_other_gate_metrics_are_higher_is_better(metric: str) -> None:
    rules = RegistryParams(metric=metric)
    assert rules.mode == "max"
    assert decide({metric: 0.9}, {metric: 0.8}, rules).promote
    assert not decide({metric: 0.8}, {metric: 0.9}, rules).promote


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "registry.metric=test/cka_to_pretrained",
            "registry.metric: must be one of test/macro_f1, test/accuracy, test/loss, test/ece "
            "or test/f1/<label>",
        ),
        ("registry.metric=val/accuracy", "registry.metric: must be one of"),
        ("registry.metric=test/f1/", "registry.metric: must be one of"),
        ("registry.min_delta=-0.01", "registry.min_delta: Input should be greater than or equal to 0"),
    ],
)
def test_gate_params_the_champion_cannot_be_compared_on_are_refused(override: str, message: str) -> None:
    with pytest.raises(ParamsError) as raised:
        load_params(DEFAULTS, [override])
    assert str(raised.value).startswith(f"--set {message}")  # the value came from --set, not the file


def test_every_gate_metric_is_what_both_sides_report(tmp_path: Path) -> None:
    """The champion's re-score and the challenger's evaluation name the gate metrics the same way."""
    names = ["negative", "positive"]
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.2], [-1.0, 1.5], [0.3, 0.1]])
    labels = torch.tensor([0, 1, 1, 1])
    rescored = named_metrics(logits, labels, names)
    evaluated, _ = evaluate_predictions(["a", "b", "c", "d"], labels, logits, names, tmp_path)
    for metric in [*GATE_METRICS, *(f"test/f1/{n}" for n in names)]:
        RegistryParams(metric=metric)  # accepted as a gate metric
        assert rescored[metric] == pytest.approx(evaluated[metric]), metric


def test_stored_scores_on_different_label_sets_do_not_compare() -> None:
    """A new label: the flow's gate sends the user to --force, and so does the manual gate."""
    new = StoredScores(
        "3", scores(0.9) | {"test/support/neg": 5, "test/support/pos": 5, "test/support/meh": 2}
    )
    old = StoredScores("1", scores(0.1) | {"test/support/neg": 5, "test/support/pos": 5})
    decision = decide_on_stored_scores(new, old, RULES)
    assert not decision.promote
    assert decision.reasons == [
        "different label sets (version 3: meh, neg, pos; champion version 1: neg, pos), so no score "
        "compares; promote with --force if the new labels are meant"
    ]
    same = StoredScores("3", scores(0.9) | {"test/support/neg": 4, "test/support/pos": 6})
    assert decide_on_stored_scores(same, old, RULES).promote


def rows(keep: list[bool], labels: list[str] | None = None, recorded: bool = True) -> GateRows:
    return GateRows(np.array(keep), tuple(labels or ["neg", "pos"] * (len(keep) // 2)), recorded)


def never_rescored(rows: GateRows) -> dict[str, float]:
    raise AssertionError("the challenger was re-scored when nothing could be compared")


def test_registration_gate_promotes_the_first_version_without_scoring_again() -> None:
    decision = decide_at_registration(scores(0.1), ChampionOnTest(), RULES, "1", never_rescored)
    assert decision.promote and decision.reasons == ["no champion yet"]


def test_registration_gate_keeps_a_champion_with_other_labels() -> None:
    decision = decide_at_registration(scores(0.9), ChampionOnTest("1"), RULES, "2", never_rescored)
    assert not decision.promote
    assert decision.reasons == ["champion has a different label set; promote manually with --force"]


def test_registration_gate_refuses_when_the_champion_saw_every_test_row() -> None:
    champion = ChampionOnTest("1", None, rows([False, False, False, False]))
    decision = decide_at_registration(scores(0.9), champion, RULES, "2", never_rescored)
    assert not decision.promote
    assert decision.reasons[0].startswith("all 4 test rows were in the champion's training data")
    assert decision.reasons[0].endswith("or promote manually with `bitune promote 2 --force`")


def test_registration_gate_compares_the_challenger_on_the_champions_unseen_rows() -> None:
    unseen = rows([True, True, False, True])
    asked: list[GateRows] = []

    def on(rows: GateRows) -> dict[str, float]:
        asked.append(rows)
        return scores(0.70)  # on the unseen rows only: worse than on the whole split

    champion = ChampionOnTest("1", scores(0.75), unseen)
    decision = decide_at_registration(scores(0.90), champion, RULES, "2", on)
    assert asked == [unseen]
    assert not decision.promote
    assert decision.reasons[0] == "compared on 3 of 4 test rows: 1 was in the champion's training data"
    assert "0.7000 vs champion 0.7500" in decision.reasons[1]


def test_registration_text_leads_with_the_decision_and_lists_the_shown_scores() -> None:
    metrics = scores(0.8123, cka=0.95) | {"test/loss": 0.4, "test/support/neg": 10.0}
    text = registration_text("clf", "3", GateDecision(True, ["a", "b"]), metrics, "abc123")
    assert text.splitlines() == [
        "clf version 3, promoted to **champion** at registration (data version `abc123`).",
        "",
        "Gate: a; b",
        "",
        "| test score | value |",
        "|---|---|",
        "| test/accuracy | 0.8123 |",
        "| test/macro_f1 | 0.8123 |",
        "| test/loss | 0.4000 |",
        "| test/cka_to_pretrained | 0.9500 |",
    ]
    kept = registration_text("clf", "4", GateDecision(False, ["x" * 6000]), {}, "abc123")
    assert "kept as **challenger**" in kept and len(kept) == 5000  # MLflow's description limit
