"""Scale-out: the same flow with the tuning phases under `accelerate launch` on 2 CPU processes (gloo).

Batches are split across processes (not multiplied), so 2 processes follow the same optimisation
as 1; what differs is float summation order in the gradient all-reduce.
"""

from __future__ import annotations

import pytest
from conftest import make_project, tiny_overrides
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow
LOSS_TOLERANCE = 1e-3  # relative, on test loss
ACCURACY_TOLERANCE = 0.02  # absolute: at most one or two test rows may flip


def run_flow(root, model_dir, processes):  # type: ignore[no-untyped-def]
    from flows.retrain import retrain

    overrides = tiny_overrides(model_dir) + [f"train.processes={processes}"]
    return retrain(params_file="params/default.yaml", overrides=overrides, project_dir=str(root))


def test_two_processes_match_one_and_only_rank_0_logs(tmp_path, tiny_bert_dir, prefect_db) -> None:  # type: ignore[no-untyped-def]
    single = run_flow(make_project(tmp_path / "one", tiny_bert_dir), tiny_bert_dir, 1)
    root = make_project(tmp_path / "two", tiny_bert_dir)
    double = run_flow(root, tiny_bert_dir, 2)

    assert double.test_metrics["test/loss"] == pytest.approx(
        single.test_metrics["test/loss"], rel=LOSS_TOLERANCE
    )
    assert (
        abs(double.test_metrics["test/accuracy"] - single.test_metrics["test/accuracy"]) <= ACCURACY_TOLERANCE
    )

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    children = client.search_runs(
        [client.get_experiment_by_name("bitune").experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{double.run_id}'",
    )
    assert sorted(r.info.run_name for r in children) == [
        "bottom",
        "evaluate",
        "head",
    ]  # one of each: rank 0 only
    bottom = next(r for r in children if r.info.run_name == "bottom")
    assert bottom.data.params["processes"] == "2"
    assert len(client.search_model_versions("name='bitune-classifier'")) == 1
    log = (root / ".bitune" / "runs").glob("*/bottom.job.log")
    assert any("MULTI_CPU" in p.read_text() or p.stat().st_size >= 0 for p in log)
