"""The promotion gate: does a challenger deserve to replace the champion?

Pure: metrics in, decision and reasons out. The registry task feeds it the challenger's and the
champion's scores on the same test data and records the decision as tags on the model version;
`bitune promote` feeds it the scores each version logged, which only compare on the same test rows,
or, when those differ, both versions' fresh scores on the local test rows neither trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bitune.errors import ParamsError
from bitune.params import PER_CLASS_F1, RegistryParams

if TYPE_CHECKING:  # bitune.evaluation.unseen imports GateDecision from here
    from bitune.evaluation.unseen import GateRows

CKA = "test/cka_to_pretrained"
SUPPORT = "test/support/"
# Scores travel through MLflow as floats and tags; a gain equal to `min_delta` must not fail on rounding.
TOLERANCE = 1e-9


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return ("promote: " if self.promote else "keep champion: ") + "; ".join(self.reasons)


def cka_change(drop: float) -> str:
    """The CKA move in words: a rise is not a negative fall, and rounding noise is no change."""
    if abs(drop) < 5e-5:
        return "CKA to pretrained unchanged"
    return f"CKA to pretrained {'fell' if drop > 0 else 'rose'} by {abs(drop):.4f}"


def decide(
    challenger: dict[str, float], champion: dict[str, float] | None, rules: RegistryParams
) -> GateDecision:
    """Promote when there is no champion, or the metric improves by `min_delta` without more forgetting.

    `min_delta` 0 asks for a strict improvement (a tie keeps the champion); a positive `min_delta`
    asks for a gain of at least that much. The gain is signed by `rules.mode`: for loss and ece
    (lower is better) it is the champion's score minus the challenger's.
    """
    if champion is None:
        return GateDecision(True, ["no champion yet"])
    metric = rules.metric
    if metric not in challenger or metric not in champion:
        side = "challenger" if metric not in challenger else "champion"
        label = metric.removeprefix(PER_CLASS_F1)
        if metric.startswith(PER_CLASS_F1) and challenger.get(f"test/support/{label}") == 0:
            return GateDecision(
                False,
                [
                    f"{metric}: label {label!r} has no rows in the test split, so it has no F1; "
                    "gate on test/macro_f1 or add test rows of that label"
                ],
            )
        return GateDecision(
            False, [f"metric {metric} missing on {side}; set registry.metric to a logged test metric"]
        )
    gain = challenger[metric] - champion[metric]
    if rules.mode == "min":
        gain = -gain
    if rules.min_delta:
        ok, needs = gain >= rules.min_delta - TOLERANCE, f">= {rules.min_delta:+.4f}"
    else:
        ok, needs = gain > TOLERANCE, "> 0"
    scores = f"{metric} {challenger[metric]:.4f} vs champion {champion[metric]:.4f}"
    lower = "lower is better, " if rules.mode == "min" else ""
    reasons = [f"{scores} ({lower}gain {gain:+.4f}, needs {needs})"]
    if CKA in challenger and CKA in champion:
        drop = champion[CKA] - challenger[CKA]
        within = drop <= rules.max_cka_drop + TOLERANCE
        verdict = "" if within else ", more forgetting than allowed"
        reasons.append(f"{cka_change(drop)} (allowed drop {rules.max_cka_drop:.4f}{verdict})")
        ok = ok and within
    return GateDecision(ok, reasons)


@dataclass(frozen=True)
class ChampionOnTest:
    """The champion as the gate sees it on this run's test split."""

    version: str | None = None  # None: the registry has no champion yet
    scores: dict[str, float] | None = None  # None: not scored (other labels, or no unseen rows to score)
    rows: GateRows | None = None  # which test rows it is compared on; None when labels differ


def decide_at_registration(
    challenger: dict[str, float],
    champion: ChampionOnTest,
    rules: RegistryParams,
    challenger_version: str,
    challenger_on: Callable[[GateRows], dict[str, float]],
) -> GateDecision:
    """The flow's gate, with both models scored on the same rows, none of them seen by the champion.

    `challenger`: its scores on the whole test split. `challenger_on(rows)`: its scores on the rows
    the champion is compared on, asked for only when the champion was scored (the registry task
    re-scores the saved model when some rows are left out).
    """
    if champion.version is None:
        return decide(challenger, None, rules)
    if champion.rows is None:
        return GateDecision(False, ["champion has a different label set; promote manually with --force"])
    problem = champion.rows.problem(rules.metric, challenger_version)
    if problem is not None or champion.scores is None:
        return GateDecision(False, [problem or "the champion could not be scored"])
    return champion.rows.annotate(decide(challenger_on(champion.rows), champion.scores, rules))


SHOWN_SCORES = ("test/accuracy", "test/macro_f1", "test/ece", "test/loss", CKA)


def registration_text(
    name: str, version: str, decision: GateDecision, metrics: dict[str, float], data_md5: str
) -> str:
    """The gate's decision and the test scores in Markdown: what the run page and the model version
    page show first, instead of a tag among dozens."""
    outcome = "promoted to **champion**" if decision.promote else "kept as **challenger**"
    scores = [f"| {key} | {metrics[key]:.4f} |" for key in SHOWN_SCORES if key in metrics]
    return "\n".join(
        [
            f"{name} version {version}, {outcome} at registration (data version `{data_md5}`).",
            "",
            f"Gate: {'; '.join(decision.reasons)}",
            "",
            "| test score | value |",
            "|---|---|",
            *scores,
        ]
    )[:5000]


@dataclass(frozen=True)
class StoredScores:
    """What a model version logged when it was trained: its test scores and which rows they are on."""

    version: str
    scores: dict[str, float]
    data_version: str | None = None
    test_split: str | None = None  # `split_digest` of its test rows; None on versions before the tag

    def labels(self) -> set[str]:
        """The labels it was scored on (`test/support/<label>`, logged for every label); empty if older."""
        return {key.removeprefix(SUPPORT) for key in self.scores if key.startswith(SUPPORT)}


def decide_on_stored_scores(
    challenger: StoredScores, champion: StoredScores | None, rules: RegistryParams
) -> GateDecision:
    """The gate for a manual promotion, which reuses the scores each version logged at training time.

    Those scores come from each version's own test split. They compare when both splits hold the same
    rows: then neither model trained on them. Versions that recorded their test rows are compared on
    that; older ones only when trained on the same data version, with a note that the split is assumed.
    """
    if champion is None:
        return decide(challenger.scores, None, rules)
    ours, theirs = challenger.labels(), champion.labels()
    if ours and theirs and ours != theirs:
        return GateDecision(
            False,
            [
                f"different label sets (version {challenger.version}: {', '.join(sorted(ours))}; champion "
                f"version {champion.version}: {', '.join(sorted(theirs))}), so no score compares; "
                "promote with --force if the new labels are meant"
            ],
        )
    if challenger.test_split and champion.test_split:
        if challenger.test_split != champion.test_split:
            return GateDecision(
                False,
                [
                    f"scored on different test rows (version {challenger.version} on split "
                    f"{challenger.test_split}, champion version {champion.version} on {champion.test_split}: "
                    "the data or data.split changed), so the scores do not compare and either may have "
                    "trained on the other's test rows; let the flow's gate decide (`bitune run` re-scores "
                    "the champion on the rows it has not seen) or promote with --force"
                ],
            )
        return decide(challenger.scores, champion.scores, rules)
    if challenger.data_version and champion.data_version and challenger.data_version != champion.data_version:
        return GateDecision(
            False,
            [
                f"scored on different data versions ({challenger.data_version[:8]} vs champion "
                f"{champion.data_version[:8]}), so the scores do not compare; retrain on the champion's "
                "data or promote with --force"
            ],
        )
    unrecorded = [mv.version for mv in (challenger, champion) if not mv.test_split]
    which = (
        f"versions {' and '.join(unrecorded)} kept no record of their"
        if len(unrecorded) > 1
        else f"version {unrecorded[0]} kept no record of its"
    )
    note = (
        f"{which} test rows (trained by an older bitune), "
        "so both are assumed scored on the same split of the same data"
    )
    decision = decide(challenger.scores, champion.scores, rules)
    return GateDecision(decision.promote, [note, *decision.reasons])


def needs_rescore(challenger: StoredScores, champion: StoredScores | None) -> bool:
    """Whether the logged scores fail to compare only for being on different test rows: the one case
    that scoring both again on rows neither trained on settles (another label set it does not)."""
    if champion is None:
        return False
    ours, theirs = challenger.labels(), champion.labels()
    if ours and theirs and ours != theirs:
        return False
    if challenger.test_split and champion.test_split:
        return challenger.test_split != champion.test_split
    return bool(
        challenger.data_version and champion.data_version and challenger.data_version != champion.data_version
    )


@dataclass(frozen=True)
class Rescore:
    """Both versions scored again on one local test split, on only the rows neither trained on."""

    split: str  # `split_digest` of the local test split
    rows: int  # rows neither version trained on: the ones both were scored on
    total: int  # rows in the local test split
    challenger: dict[str, float]
    champion: dict[str, float]

    def note(self) -> str:
        return (
            f"re-scored both on {self.rows} test rows neither trained on, "
            f"of {self.total} in local test split {self.split}"
        )


def decide_on_rescore(
    challenger: StoredScores, champion: StoredScores, rescore: Rescore, rules: RegistryParams
) -> GateDecision:
    """The gate on the fresh scores, its reasons led by what was re-scored. CKA is measured on probe
    texts, not test rows, so each side keeps the CKA it logged (as the flow's gate does)."""
    fresh = []
    for stored, scores in ((challenger, rescore.challenger), (champion, rescore.champion)):
        fresh.append(scores | ({CKA: stored.scores[CKA]} if CKA in stored.scores else {}))
    decision = decide(fresh[0], fresh[1], rules)
    return GateDecision(decision.promote, [rescore.note(), *decision.reasons])


def check_gate_metric_labels(registry: RegistryParams, labels: tuple[str, ...]) -> None:
    """`registry.metric: test/f1/<label>` must name a label of the data: a typo trained in full, then
    every run kept the old champion ("metric missing on challenger"), a scheduled one every night."""
    if not registry.metric.startswith(PER_CLASS_F1):
        return
    label = registry.metric.removeprefix(PER_CLASS_F1)
    if label not in labels:
        raise ParamsError(
            f"registry.metric: label {label!r} is not in the data (labels: {', '.join(labels)}); "
            f"use test/f1/<one of them> or test/macro_f1"
        )
