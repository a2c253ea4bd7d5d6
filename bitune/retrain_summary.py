"""What one retrain did, as the CLI prints it and as the flow run's Prefect artifact shows it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bitune.params import redact

SCORES = ("accuracy", "macro_f1")  # the scores of each phase row and of the test row


@dataclass
class RetrainSummary:
    data_version: str
    tracking_uri: str
    skipped: bool = False
    reason: str = ""
    run_id: str | None = None
    phases: list[dict[str, object]] = field(default_factory=list)
    test_metrics: dict[str, float] = field(default_factory=dict)
    model_name: str = ""
    model_version: str | None = None
    promoted: bool = False
    gate: list[str] = field(default_factory=list)
    champion_version: str | None = None

    def shown_store(self) -> str:
        """The tracking URI as the terminal and the Prefect UI may show it: `user:pass@` masked, since
        an artifact is readable by everyone with the Prefect UI and a terminal ends up in CI logs."""
        return redact("tracking.uri", self.tracking_uri)

    def markdown(self) -> str:
        """The run at a glance for the Prefect UI: a scheduled run has no terminal to print on."""
        store = self.shown_store()
        if self.skipped:
            return (
                f"## bitune retrain: nothing to do\n\n{self.reason}\n\n"
                f"Data version `{self.data_version}` · MLflow `{store}`\n"
            )
        lines = [
            f"## bitune retrain: {self.model_name} version {self.model_version}, "
            + ("**promoted to champion**" if self.promoted else "not promoted"),
            "",
            "| phase | val accuracy | val macro-F1 | CKA to pretrained | train s |",
            "|---|---:|---:|---:|---:|",
        ]
        for p in self.phases:
            scores = " | ".join(_number(p.get(f"val_{key}")) for key in SCORES)
            cka, seconds = _number(p.get("cka")), _number(p.get("seconds"), 1)
            lines.append(f"| {p['phase']} | {scores} | {cka} | {seconds} |")
        m = self.test_metrics
        scores = " | ".join(_number(m.get(f"test/{key}")) for key in SCORES)
        lines += [f"| **test** | {scores} | {_number(m.get('test/cka_to_pretrained'))} | |", ""]
        champion = f"champion: version {self.champion_version}" if self.champion_version else "no champion"
        lines += [
            f"Gate ({champion} after this run): " + ("; ".join(self.gate) or "no reasons recorded"),
            "",
            f"MLflow run `{self.run_id}` · data version `{self.data_version}` · MLflow `{store}`",
        ]
        return "\n".join(lines) + "\n"


def _number(value: object, digits: int = 4) -> str:
    if isinstance(value, int | float) and math.isfinite(value):
        return f"{value:.{digits}f}"
    return "–"
