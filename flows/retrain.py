"""The `retrain` flow: data version → preprocess → head phase → bottom phase → evaluate → register."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from prefect import flow
from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run
from prefect.states import Completed, State

from bitune.params import Params, load_params
from bitune.project_lock import hold_project
from bitune.retrain_summary import RetrainSummary
from bitune.tuning.schedule import expand_strategy
from tasks.data import version_data
from tasks.evaluate import evaluate
from tasks.preprocess import preprocess
from tasks.registry import register
from tasks.run_report import publish_summary
from tasks.runs import (
    close_parent_run,
    open_parent_run,
    pipeline_key,
    preflight,
    previous_success,
    reset_pipeline,
)
from tasks.tracking import TrackingSettings
from tasks.tuning import PhaseOutput, tune_phase


def strategy_run_name() -> str:
    """`retrain-<strategy>`: the run list says what each run trains, not a random `crafty-catfish`.

    Prefect calls this before the flow body; params that do not load fail there, with their own error.
    """
    given = flow_run.parameters
    try:
        params = load_params(
            Path(given.get("project_dir", ".")).resolve() / given.get("params_file", "params/default.yaml"),
            given.get("overrides") or [],
        )
    except Exception:  # noqa: BLE001 - the flow body reports it; a name must not fail the run
        return "retrain"
    return f"retrain-{params.strategy.name}"


def label_flow_run(strategy: str, data_md5: str) -> None:
    """Once the data version is known: the run's name and tags carry it, so runs filter by data."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return
    run = context.flow_run
    name = f"retrain-{strategy}-{data_md5[:8]}"
    tags = [t for t in run.tags if not t.startswith(("data:", "strategy:"))]
    tags += [f"strategy:{strategy}", f"data:{data_md5[:8]}"]
    with get_client(sync_client=True) as client:
        client.update_flow_run(run.id, name=name, tags=tags)
    # prefect.runtime reads the run as it started: the MLflow run's link to this one names it as it is now
    context.flow_run = run.model_copy(update={"name": name, "tags": tags})


def outcome(summary: RetrainSummary) -> str:
    """One line for the flow run's final state: what a glance at the Prefect run list should tell."""
    if summary.skipped:
        return f"nothing to do: {summary.reason}"
    verdict = (
        "promoted to champion"
        if summary.promoted
        else f"not promoted (champion stays version {summary.champion_version})"
    )
    return f"{summary.model_name} version {summary.model_version} {verdict}; data {summary.data_version[:8]}"


@flow(name="retrain", flow_run_name=strategy_run_name)
def retrain(
    params_file: str = "params/default.yaml",
    overrides: list[str] | None = None,
    project_dir: str = ".",
    force: bool = False,
) -> RetrainSummary:
    """Calling it returns the RetrainSummary; the run's final state says the outcome in words
    (named Skipped when nothing was new), so the Prefect UI shows it without opening the artifact."""
    root = Path(project_dir).resolve()
    params = load_params(root / params_file, overrides or [])
    with hold_project(root):  # a manual run and a scheduled one must not share data/ and checkpoints
        summary = run_pipeline(root, params, force)
    name = "Skipped" if summary.skipped else "Completed"
    final: State[RetrainSummary] = Completed(name=name, message=outcome(summary), data=summary)
    return cast(RetrainSummary, final)  # Prefect ends the run in this state; the caller gets its data


def run_pipeline(root: Path, params: Params, force: bool) -> RetrainSummary:
    """The stages in order, for a project this process holds."""
    settings = TrackingSettings.from_params(params.tracking, root)

    # tracking store, model, writable folders: before the data step changes anything
    preflight(settings, params, str(root))
    data = version_data(params.data, str(root))
    label_flow_run(params.strategy.name, data.md5)
    key = pipeline_key(data.md5, params, data.columns)
    # a forced run retrains whatever ran before: looking would log "nothing new to learn unless --force"
    previous = None if force else previous_success(settings, key)
    if previous:
        skipped = RetrainSummary(
            data.md5,
            settings.uri,
            skipped=True,
            run_id=previous,
            reason=f"data version and params unchanged since run {previous}; use --force to retrain",
        )
        publish_summary(skipped)
        return skipped
    if force:
        reset_pipeline(str(root), key, str(params.train.checkpoint_dir))

    prepared = preprocess(params, data.md5, str(root))
    run_id = open_parent_run(settings, params, data, prepared, key, str(root))
    try:
        phases: list[PhaseOutput] = []
        for phase in expand_strategy(params.strategy):
            phases.append(
                tune_phase.with_options(name=f"tune-{phase.key}")(
                    params,
                    prepared,
                    phase.index,
                    phases[-1] if phases else None,
                    str(root),
                    key,
                    settings,
                    run_id,
                )
            )
        evaluation = evaluate(params, prepared, phases, str(root), key, settings, run_id)
        registration = register(
            params, prepared, evaluation, phases[-1].model_dir, data.md5, settings, run_id
        )
    except BaseException as exc:
        # interrupted (Ctrl-C, SIGTERM) or failed: close the runs directly, not as a new task
        killed = isinstance(exc, KeyboardInterrupt | TerminationSignal)
        close_parent_run.fn(settings, run_id, "KILLED" if killed else "FAILED")
        raise
    close_parent_run(settings, run_id, "FINISHED")
    summary = RetrainSummary(
        data_version=data.md5,
        tracking_uri=settings.uri,
        run_id=run_id,
        phases=[p.summary_row() for p in phases],
        test_metrics=evaluation.metrics,
        model_name=registration.name,
        model_version=registration.version,
        promoted=registration.promoted,
        gate=registration.reasons,
        champion_version=registration.champion_version,
    )
    publish_summary(summary)
    return summary
