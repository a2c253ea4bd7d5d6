"""The promotion gate: does a challenger deserve to replace the champion?

Pure: metrics in, decision and reasons out. The registry task feeds it the challenger's and the
champion's scores on the same test data and records the decision as tags on the model version.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bitune.params import RegistryParams

CKA = "test/cka_to_pretrained"


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reasons: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return ("promote: " if self.promote else "keep champion: ") + "; ".join(self.reasons)


def decide(challenger: dict[str, float], champion: dict[str, float] | None, rules: RegistryParams) -> GateDecision:
    """Promote when there is no champion, or the metric improves by `min_delta` without more forgetting."""
    if champion is None:
        return GateDecision(True, ["no champion yet"])
    metric = rules.metric
    if metric not in challenger or metric not in champion:
        return GateDecision(False, [f"metric {metric} missing on {'challenger' if metric not in challenger else 'champion'}"])
    gain = challenger[metric] - champion[metric]
    reasons = [f"{metric} {challenger[metric]:.4f} vs champion {champion[metric]:.4f} (gain {gain:+.4f}, "
               f"needs > {rules.min_delta:+.4f})" if rules.min_delta else
               f"{metric} {challenger[metric]:.4f} vs champion {champion[metric]:.4f} (gain {gain:+.4f}, needs > 0)"]
    ok = gain > rules.min_delta if rules.min_delta == 0 else gain >= rules.min_delta
    if CKA in challenger and CKA in champion:
        drop = champion[CKA] - challenger[CKA]
        within = drop <= rules.max_cka_drop
        reasons.append(f"CKA to pretrained fell by {drop:+.4f} (allowed {rules.max_cka_drop:.4f})")
        ok = ok and within
    return GateDecision(ok, reasons)
