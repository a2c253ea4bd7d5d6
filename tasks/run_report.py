"""The retrain's summary as a markdown artifact on its Prefect flow run (UI → the run → Artifacts)."""

from __future__ import annotations

import logging

from prefect import task
from prefect.artifacts import create_markdown_artifact

from bitune.retrain_summary import RetrainSummary

log = logging.getLogger("bitune")
SUMMARY_KEY = "retrain-summary"  # one key: the Artifacts page lists every run's summary under it


def publish_summary_fn(summary: RetrainSummary) -> str | None:
    """The artifact's id; None when the Prefect API refused it. The model is registered by now, so a
    summary that cannot be stored is a warning, never a failed run."""
    try:
        artifact = create_markdown_artifact(
            markdown=summary.markdown(),
            key=SUMMARY_KEY,
            description="bitune retrain: phases, test scores, gate decision",
        )
    except Exception as exc:  # noqa: BLE001 - any API fault: the run itself has succeeded
        log.warning("could not store the run summary in Prefect (%s: %s)", type(exc).__name__, exc)
        return None
    return str(artifact)


publish_summary = task(name="publish-summary", retries=0)(publish_summary_fn)
