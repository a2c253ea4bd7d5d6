"""What one retrain did, as the CLI prints it and as the flow run's Prefect artifact shows it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit, urlunsplit

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
    experiment_id: str | None = None  # the run's experiment: the MLflow UI's run page is under it

    def shown_store(self) -> str:
        """The tracking URI as the terminal and the Prefect UI may show it: `user:pass@` masked, since
        an artifact is readable by everyone with the Prefect UI and a terminal ends up in CI logs."""
        return redact("tracking.uri", self.tracking_uri)

    def server_url(self) -> str | None:
        """The MLflow server the UI links point at, without `user:pass@`: a link carrying `user:***@`
        would send `***` as the password, one without lets the browser ask. None for a database or
        file store, which has no web UI until `bitune ui` serves one."""
        parts = urlsplit(self.tracking_uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        netloc = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))

    def run_link(self) -> str | None:
        """The run's page in the MLflow UI (its router: `#/experiments/<id>/runs/<run id>`)."""
        server = self.server_url()
        if server is None or self.run_id is None or self.experiment_id is None:
            return None
        return f"{server}/#/experiments/{_part(self.experiment_id)}/runs/{_part(self.run_id)}"

    def model_version_link(self) -> str | None:
        """The registered version's page in the MLflow UI (`#/models/<name>/versions/<n>`)."""
        server = self.server_url()
        if server is None or not self.model_name or self.model_version is None:
            return None
        return f"{server}/#/models/{_part(self.model_name)}/versions/{_part(self.model_version)}"

    def where_to_look(self) -> str:
        """The last line: the run (a link where the store is a server), the data, the store."""
        store = f"MLflow `{self.shown_store()}`"
        run = f"MLflow run `{self.run_id}`"
        if (link := self.run_link()) is not None:
            run = f"[{run}]({link})"
        if self.server_url() is None:
            store += " (open it with `bitune ui` in the project folder)"
        return f"{run} · data version `{self.data_version}` · {store}"

    def markdown(self) -> str:
        """The run at a glance for the Prefect UI: a scheduled run has no terminal to print on."""
        if self.skipped:
            return f"## bitune retrain: nothing to do\n\n{self.reason}\n\n{self.where_to_look()}\n"
        model = f"{self.model_name} version {self.model_version}"
        if (link := self.model_version_link()) is not None:
            model = f"[{model}]({link})"
        lines = [
            f"## bitune retrain: {model}, "
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
            self.where_to_look(),
        ]
        return "\n".join(lines) + "\n"


def _part(name: str) -> str:
    """One path segment of a UI link: a `/` or space in a model name must not split or end it."""
    return quote(name, safe="")


def _number(value: object, digits: int = 4) -> str:
    if isinstance(value, int | float) and math.isfinite(value):
        return f"{value:.{digits}f}"
    return "–"
