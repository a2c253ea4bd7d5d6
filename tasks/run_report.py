"""The retrain's summary as a markdown artifact on its Prefect flow run (UI → the run → Artifacts)."""

from __future__ import annotations

import dataclasses
import logging

from mlflow.tracking import MlflowClient
from prefect import task
from prefect.artifacts import create_markdown_artifact

from bitune.retrain_summary import RetrainSummary

log = logging.getLogger("bitune")
SUMMARY_KEY = "retrain-summary"  # one key: the Artifacts page lists every run's summary under it


def with_experiment(summary: RetrainSummary) -> RetrainSummary:
    """The summary with its run's experiment id, which the run's link in the MLflow UI needs; read
    only for a server store (the others get no link) and left out, with a warning, when it cannot be."""
    if summary.experiment_id is not None or summary.run_id is None or summary.server_url() is None:
        return summary
    try:
        run = MlflowClient(tracking_uri=summary.tracking_uri).get_run(summary.run_id)
    except Exception as exc:  # noqa: BLE001 - any fault: the summary goes out without the run's link
        log.warning(
            "the run summary links no MLflow run: cannot read run %s at %s (%s)",
            summary.run_id,
            summary.shown_store(),
            type(exc).__name__,
        )
        return summary
    return dataclasses.replace(summary, experiment_id=run.info.experiment_id)


def publish_summary_fn(summary: RetrainSummary) -> str | None:
    """The artifact's id; None when the Prefect API refused it. The model is registered by now, so a
    summary that cannot be stored is a warning, never a failed run."""
    try:
        artifact = create_markdown_artifact(
            markdown=with_experiment(summary).markdown(),
            key=SUMMARY_KEY,
            description="bitune retrain: phases, test scores, gate decision",
        )
    except Exception as exc:  # noqa: BLE001 - any API fault: the run itself has succeeded
        log.warning("could not store the run summary in Prefect (%s: %s)", type(exc).__name__, exc)
        return None
    return str(artifact)


publish_summary = task(name="publish-summary", retries=0)(publish_summary_fn)
