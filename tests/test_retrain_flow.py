"""The whole retrain flow, for real: Prefect run, DVC repo and remote, MLflow store and registry."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from conftest import make_project, tiny_overrides
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_bert_dir, prefect_db):  # type: ignore[no-untyped-def]
    from flows.retrain import retrain

    root = make_project(tmp_path_factory.mktemp("project"), tiny_bert_dir)
    summary = retrain(
        params_file="params/default.yaml", overrides=tiny_overrides(tiny_bert_dir), project_dir=str(root)
    )
    return root, summary


def client_for(root: Path) -> MlflowClient:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_first_run_registers_champion_version_1(first_run) -> None:  # type: ignore[no-untyped-def]
    root, summary = first_run
    assert not summary.skipped
    assert summary.model_version == "1" and summary.promoted
    client = client_for(root)
    mv = client.get_model_version_by_alias("bitune-classifier", "champion")
    assert str(mv.version) == "1"
    assert str(client.get_model_version_by_alias("bitune-classifier", "challenger").version) == "1"
    assert mv.tags["bitune.data_version"] == summary.data_version
    assert "no champion yet" in mv.tags["bitune.gate"]


def test_the_flow_run_carries_its_summary_as_a_prefect_artifact(first_run) -> None:  # type: ignore[no-untyped-def]
    """What a scheduled run shows in the Prefect UI: the same scores the CLI prints."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tasks.run_report import SUMMARY_KEY

    _, summary = first_run
    with get_client(sync_client=True) as client:
        by_key = ArtifactFilter(key=ArtifactFilterKey(any_=[SUMMARY_KEY]))
        found = client.read_artifacts(artifact_filter=by_key)
    ours = [a for a in found if summary.run_id and summary.run_id in str(a.data)]
    assert len(ours) == 1, [str(a.data)[:200] for a in found]
    assert ours[0].type == "markdown" and ours[0].flow_run_id is not None
    assert f"{summary.test_metrics['test/accuracy']:.4f}" in str(ours[0].data)
    assert f"version {summary.model_version}, **promoted to champion**" in str(ours[0].data)


def test_mlflow_has_parent_and_nested_runs_with_params_metrics_artifacts(first_run) -> None:  # type: ignore[no-untyped-def]
    root, summary = first_run
    client = client_for(root)
    parent = client.get_run(summary.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["strategy.name"] == "bidirectional"
    assert parent.data.params["data.version"] == summary.data_version
    assert parent.data.tags["git.commit"] != "none"
    assert parent.inputs.dataset_inputs[0].dataset.digest == summary.data_version
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{summary.run_id}'"
    )
    by_name = {r.info.run_name: r for r in children}
    assert set(by_name) == {"head", "bottom", "evaluate"}
    head = by_name["head"]
    history = client.get_metric_history(head.info.run_id, "head/val/accuracy")
    assert [m.step for m in history] == [1, 2, 3]
    assert head.data.params["device"] == "cpu"
    assert "head/cka_to_pretrained" in head.data.metrics
    bottom_history = client.get_metric_history(by_name["bottom"].info.run_id, "bottom/val/accuracy")
    assert len(bottom_history) == 2
    assert by_name["bottom"].data.metrics["bottom/drift/layers.0"] > 0
    assert by_name["bottom"].data.metrics["bottom/drift/layers.3"] == 0
    for phase in ("head", "bottom"):  # each phase's plot in its own run, should a later phase fail
        assert "drift_per_layer.png" in {a.path for a in client.list_artifacts(by_name[phase].info.run_id)}
    evaluate = by_name["evaluate"]
    assert 0 <= evaluate.data.metrics["test/accuracy"] <= 1
    names = {a.path for a in client.list_artifacts(evaluate.info.run_id)}
    assert {
        "evaluation_report.md",
        "confusion_matrix.png",
        "learning_curves.png",
        "drift_per_layer.png",
    } <= names
    # the model is a logged model of the parent run (the experiment's Models tab), its version's source
    (output,) = parent.outputs.model_outputs
    version = client.get_model_version("bitune-classifier", summary.model_version)
    assert version.source == f"models:/{output.model_id}"
    model_files = {a.path for a in client.list_logged_model_artifacts(output.model_id)}
    assert "MLmodel" in model_files


def test_phases_change_only_what_they_unfroze(first_run, tiny_bert_dir) -> None:  # type: ignore[no-untyped-def]
    root, summary = first_run
    pretrained = load_file(str(tiny_bert_dir / "model.safetensors"))
    runs = sorted((root / ".bitune" / "runs").iterdir())
    head = load_file(str(runs[-1] / "head" / "model" / "model.safetensors"))
    bottom = load_file(str(runs[-1] / "bottom" / "model" / "model.safetensors"))

    def backbone_changed(state: dict[str, torch.Tensor], prefix: str) -> bool:
        keys = [k for k in state if k.startswith("backbone." + prefix)]
        assert keys, prefix
        return any(not torch.equal(state[k], pretrained[k.removeprefix("backbone.")]) for k in keys)

    # head phase: nothing in the encoder moved, the head did
    for group in ("embeddings.", "encoder.layer.0.", "encoder.layer.3.", "pooler."):
        assert not backbone_changed(head, group), group
    # bottom phase: embeddings and layers 0-1 moved, layers 2-3 did not; head moved again
    assert backbone_changed(bottom, "embeddings.")
    assert backbone_changed(bottom, "encoder.layer.0.") and backbone_changed(bottom, "encoder.layer.1.")
    assert not backbone_changed(bottom, "encoder.layer.2.") and not backbone_changed(
        bottom, "encoder.layer.3."
    )
    assert not torch.equal(head["head.1.weight"], bottom["head.1.weight"])


def test_unchanged_rerun_is_skipped_and_force_registers_version_2(first_run, tiny_bert_dir, caplog) -> None:  # type: ignore[no-untyped-def]
    from flows.retrain import retrain

    root, first = first_run
    again = retrain(
        params_file="params/default.yaml", overrides=tiny_overrides(tiny_bert_dir), project_dir=str(root)
    )
    assert again.skipped and first.run_id in again.reason
    caplog.clear()  # the skipped run's own "already trained" line
    with caplog.at_level(logging.INFO, logger="bitune"):
        forced = retrain(
            params_file="params/default.yaml",
            overrides=tiny_overrides(tiny_bert_dir),
            project_dir=str(root),
            force=True,
        )
    assert forced.model_version == "2"
    # `--force` asked for the retrain: its log must not say there is "nothing new to learn unless --force"
    assert "already trained this data version" not in caplog.text, caplog.text
    # same data, same params, same seed: same metrics on the same machine
    assert forced.test_metrics["test/accuracy"] == pytest.approx(first.test_metrics["test/accuracy"])
    client = client_for(root)
    assert str(client.get_model_version_by_alias("bitune-classifier", "challenger").version) == "2"
    assert str(client.get_model_version_by_alias("bitune-classifier", "champion").version) == "1"


def test_plain_run_after_real_data_retrains_nothing_and_keeps_that_data(first_run, tiny_bert_dir) -> None:  # type: ignore[no-untyped-def]
    """`bitune run --data reviews.csv`, then `bitune run`: the default 'demo' must not replace reviews.csv."""
    from bitune.data.demo import make_demo_frame
    from flows.retrain import retrain

    root, _ = first_run
    reviews = root.parent / "reviews.csv"
    make_demo_frame(120, 11).to_csv(reviews, index=False)  # negative/positive, like real sentiment data
    real = retrain(
        params_file="params/default.yaml",
        overrides=[*tiny_overrides(tiny_bert_dir), f"data.source={reviews}"],
        project_dir=str(root),
    )
    assert not real.skipped and real.model_version is not None
    dvc_file = (root / "data.dvc").read_bytes()
    plain = retrain(
        params_file="params/default.yaml", overrides=tiny_overrides(tiny_bert_dir), project_dir=str(root)
    )
    assert plain.data_version == real.data_version and (root / "data.dvc").read_bytes() == dvc_file
    assert plain.skipped and real.run_id in plain.reason  # same data version, same params: nothing to do
    assert (root / "data" / "reviews.csv").read_bytes() == reviews.read_bytes()
    assert not (root / "data" / "demo.csv").exists()


def test_a_bad_file_fails_in_the_flows_own_data_step(first_run, tiny_bert_dir) -> None:  # type: ignore[no-untyped-def]
    """A deployment calls the flow without the CLI's early check: the data step must refuse on its own."""
    from project_state import data_state

    from bitune.errors import DataError
    from flows.retrain import retrain

    root, _ = first_run
    broken = root.parent / "broken.csv"
    broken.write_text("text,label\nfine,positive\ntoo,many,fields,here\n")
    champion = client_for(root).get_model_version_by_alias("bitune-classifier", "champion").version
    before = data_state(root)
    with pytest.raises(DataError, match="broken.csv: cannot parse as CSV"):
        retrain(
            params_file="params/default.yaml",
            overrides=[*tiny_overrides(tiny_bert_dir), f"data.source={broken}"],
            project_dir=str(root),
        )
    assert data_state(root) == before
    assert client_for(root).get_model_version_by_alias("bitune-classifier", "champion").version == champion
