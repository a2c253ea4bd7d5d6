"""The promotion gate: does a challenger deserve to replace the champion?

Pure: metrics in, decision and reasons out. The registry task feeds it the challenger's and the
champion's scores on the same test data and records the decision as tags on the model version;
`bitune promote` feeds it the scores each version logged, which only compare on the same data version.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bitune.params import PER_CLASS_F1, RegistryParams

CKA = "test/cka_to_pretrained"
# Scores travel through MLflow as floats and tags; a gain equal to `min_delta` must not fail on rounding.
TOLERANCE = 1e-9


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return ("promote: " if self.promote else "keep champion: ") + "; ".join(self.reasons)


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
        reasons.append(f"CKA to pretrained fell by {drop:+.4f} (allowed {rules.max_cka_drop:.4f}{verdict})")
        ok = ok and within
    return GateDecision(ok, reasons)


def decide_on_stored_scores(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    rules: RegistryParams,
    challenger_data: str | None,
    champion_data: str | None,
) -> GateDecision:
    """The gate for a manual promotion, which reuses the scores each version logged at training time.

    Those scores come from each version's own test split, so they are compared only when both
    versions were trained on the same data version; otherwise the gate refuses and says so.
    """
    if champion is not None and challenger_data and champion_data and challenger_data != champion_data:
        return GateDecision(
            False,
            [
                f"scored on different data versions ({challenger_data[:8]} vs champion {champion_data[:8]}), "
                "so the scores do not compare; retrain on the champion's data or promote with --force"
            ],
        )
    return decide(challenger, champion, rules)
