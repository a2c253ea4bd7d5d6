"""The `retrain` flow: data version → preprocess → head phase → bottom phase → evaluate → register."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path
from typing import cast

from prefect import flow
from prefect.exceptions import TerminationSignal
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.states import Cancelled, Completed, Failed, State

from bitune.params import Params, load_params
from bitune.pipeline import pipeline_key
from bitune.project_lock import ProjectBusyError, hold_project
from bitune.retrain_summary import RetrainSummary
from bitune.tuning.phase_output import PhaseOutput
from bitune.tuning.schedule import expand_strategy
from flows.console_logging import console_without_user_tracebacks
from flows.run_deadline import RunDeadline, RunTimeoutError
from tasks.data import version_data
from tasks.evaluate import evaluate
from tasks.preprocess import check_gate_metric, preprocess
from tasks.registry import register
from tasks.run_report import publish_summary
from tasks.runs import (
    close_parent_run,
    open_parent_run,
    preflight,
    previous_success,
    reset_pipeline,
)
from tasks.tracking import TrackingSettings
from tasks.tuning import tune_phase


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
    RENAMED_RUNS.names[str(run.id)] = name


class RenamedRuns(logging.Filter):
    """Prefect's own lines about a renamed run (its closing "Finished in state ...") carry the new name.

    The engine's logger holds the name the run started with, copied into its `extra` before the flow
    body runs, and the engine is out of the flow body's reach; a filter on the logger it writes to
    (`prefect.flow_runs`) sets `flow_run_name`, which the console format shows, on the records of each
    run `label_flow_run` renamed. The Prefect UI files lines by run id and shows the current name anyway.
    """

    def __init__(self) -> None:
        super().__init__()
        self.names: dict[str, str] = {}  # flow run id -> its name now

    def filter(self, record: logging.LogRecord) -> bool:
        name = self.names.get(str(getattr(record, "flow_run_id", "")))
        if name is not None:
            record.flow_run_name = name
        return True


RENAMED_RUNS = RenamedRuns()  # attached to Prefect's flow-run logger by `retrain`, not at import


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


PREFECT_RESULTS = Path(".bitune/prefect-results")


def keep_results_in_project(root: Path) -> None:
    """What Prefect still writes of this run's results goes to `<project>/.bitune/prefect-results/`.

    `retrain` persists no results (`persist_result=False`, which its tasks inherit): it has no task
    retries or Prefect caching to feed, a rerun resumes from bitune's own phase outputs and checkpoints
    under `.bitune/`, and the caller gets the summary in memory (the Prefect UI, as an artifact and the
    final state's message). Prefect still writes the exception of a run that fails, whatever that
    setting says; by default to ~/.prefect/storage, outside the project, never cleaned, readable by
    other users of a shared machine. A result storage the user configured (a block, or
    PREFECT_RESULTS_LOCAL_STORAGE_PATH) is left as it is.
    """
    from prefect.context import FlowRunContext
    from prefect.filesystems import LocalFileSystem
    from prefect.settings import get_current_settings

    context = FlowRunContext.get()
    if context is None or context.result_store is None:
        return
    storage = context.result_store.result_storage
    if not isinstance(storage, LocalFileSystem) or not storage.basepath:
        return
    if Path(storage.basepath).expanduser() != get_current_settings().home.expanduser() / "storage":
        return
    folder = LocalFileSystem(basepath=str(root / PREFECT_RESULTS))
    context.result_store = context.result_store.model_copy(update={"result_storage": folder})


# persist_result=False: retrain needs no stored results (why: keep_results_in_project)
@flow(name="retrain", flow_run_name=strategy_run_name, persist_result=False)
def retrain(
    params_file: str = "params/default.yaml",
    overrides: list[str] | None = None,
    project_dir: str = ".",
    force: bool = False,
) -> RetrainSummary:
    """Calling it returns the RetrainSummary; the run's final state says the outcome in words
    (named Skipped when nothing was new), so the Prefect UI shows it without opening the artifact.

    A run past train.timeout_minutes is stopped as SIGTERM stops it and ends Failed, named TimedOut
    as Prefect's own flow timeouts are; the caller gets a RunTimeoutError.
    """
    console_without_user_tracebacks()  # a scheduled run's output is the `bitune schedule` terminal
    logging.getLogger("prefect.flow_runs").addFilter(RENAMED_RUNS)  # once: a filter is added once
    root = Path(project_dir).resolve()
    keep_results_in_project(root)
    params = load_params(root / params_file, overrides or [])
    deadline = RunDeadline(params.train.timeout_minutes)
    with ExitStack() as held:
        try:  # a manual run and a scheduled one must not share data/ and checkpoints
            held.enter_context(hold_project(root))
        except ProjectBusyError as busy:  # not a failure: cancelled, as Prefect cancels a run over its limit
            return cast(RetrainSummary, Cancelled(message=str(busy), data=busy))
        try:
            with deadline:
                summary = run_pipeline(root, params, force)
        except (KeyboardInterrupt, TerminationSignal) as interrupt:
            if not deadline.passed:
                raise
            return cast(
                RetrainSummary,
                timed_out(deadline, shown_params_file(root, params_file), overrides, interrupt),
            )
    name = "Skipped" if summary.skipped else "Completed"
    final: State[RetrainSummary] = Completed(name=name, message=outcome(summary), data=summary)
    return cast(RetrainSummary, final)  # Prefect ends the run in this state; the caller gets its data


def shown_params_file(root: Path, params_file: str) -> str:
    """The params file as the user would open it: relative to the project when inside it."""
    path = (root / params_file).resolve()
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def timed_out(
    deadline: RunDeadline, params_file: str, overrides: list[str] | None, interrupt: BaseException
) -> State[RetrainSummary]:
    """The run's final state once the deadline stopped it (the runs are closed, the lock released).

    The traceback of where the run was when the limit passed goes to the flow run's log: it is the
    first clue to what hung.
    """
    error = RunTimeoutError(deadline.describe(params_file, overrides or []))
    error.__cause__ = interrupt
    get_run_logger().error(str(error), exc_info=error)
    return Failed(name="TimedOut", message=str(error), data=error)


def run_pipeline(root: Path, params: Params, force: bool) -> RetrainSummary:
    """The stages in order, for a project this process holds."""
    settings = TrackingSettings.from_params(params.tracking, root)

    # tracking store, model, writable folders: before the data step changes anything
    preflight(settings, params, str(root))
    data = version_data(params.data, str(root))
    label_flow_run(params.strategy.name, data.md5)
    check_gate_metric(params, str(root))  # a typo there is said even when the run skips
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
    prepared = preprocess(params, data.md5, str(root))  # refuses what it can before --force resets
    if force:
        reset_pipeline(str(root), key, str(params.train.checkpoint_dir))
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
