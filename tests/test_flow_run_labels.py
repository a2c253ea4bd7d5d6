"""What the Prefect run list shows of a retrain: the strategy and data version in the run's name and
tags, and the outcome in its final state (Skipped, promoted or not), read back from a real server."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_project, tiny_overrides

pytestmark = pytest.mark.slow


def read_run(run_id: object) -> object:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)  # type: ignore[arg-type]


def mlflow_parent(root: Path, run_id: str):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}").get_run(run_id)


def test_run_names_tags_and_final_states_say_what_happened(
    tmp_path: Path, tiny_bert_dir: Path, prefect_db
) -> None:  # type: ignore[no-untyped-def]
    from flows.retrain import retrain

    root = make_project(tmp_path / "project", tiny_bert_dir)
    overrides = tiny_overrides(tiny_bert_dir)

    state = retrain(overrides=overrides, project_dir=str(root), return_state=True)
    summary = state.result()
    assert not summary.skipped and summary.model_version == "1"  # the caller still gets the summary
    md5 = summary.data_version[:8]
    trained = read_run(state.state_details.flow_run_id)
    assert trained.name == f"retrain-bidirectional-{md5}"  # type: ignore[attr-defined]
    assert {"strategy:bidirectional", f"data:{md5}"} <= set(trained.tags)  # type: ignore[attr-defined]
    assert trained.state.type.value == "COMPLETED" and trained.state.name == "Completed"  # type: ignore[attr-defined]
    assert trained.state.message == f"bitune-classifier version 1 promoted to champion; data {md5}"  # type: ignore[attr-defined]
    parent = mlflow_parent(root, str(summary.run_id))
    assert parent.data.tags["prefect.flow_run_id"] == str(trained.id)  # type: ignore[attr-defined]
    assert parent.data.tags["prefect.flow_run_name"] == trained.name  # type: ignore[attr-defined]  # renamed

    state = retrain(overrides=overrides, project_dir=str(root), return_state=True)
    assert state.result().skipped
    skipped = read_run(state.state_details.flow_run_id)
    assert skipped.name == f"retrain-bidirectional-{md5}"  # type: ignore[attr-defined]
    assert skipped.state.type.value == "COMPLETED" and skipped.state.name == "Skipped"  # type: ignore[attr-defined]
    assert skipped.state.message.startswith("nothing to do: data version and params unchanged since run")  # type: ignore[attr-defined]


def test_a_run_whose_params_fail_is_named_by_its_strategy_and_fails(
    tmp_path: Path, tiny_bert_dir: Path, prefect_db
) -> None:  # type: ignore[no-untyped-def]
    from flows.retrain import retrain

    root = make_project(tmp_path / "project", tiny_bert_dir)
    bad = [*tiny_overrides(tiny_bert_dir), "strategy.phases.1.train=[embeddings, 'layers[0:99]', head]"]
    state = retrain(overrides=bad, project_dir=str(root), return_state=True)
    failed = read_run(state.state_details.flow_run_id)
    assert failed.name == "retrain-bidirectional"  # type: ignore[attr-defined]  # named before any data step
    assert failed.state.type.value == "FAILED" and "layers[0:99]" in failed.state.message  # type: ignore[attr-defined]
    assert not any(t.startswith("data:") for t in failed.tags)  # type: ignore[attr-defined]
