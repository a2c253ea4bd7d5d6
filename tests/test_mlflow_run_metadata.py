"""What an MLflow user sees of a retrain beyond its numbers, on a real SQLite store and registry: who
and what started each run, the gate's decision as the run's and the version's description, run names
that tell reruns apart, a model environment that installs from a public index, and a parent run that
leads to its Prefect flow run."""

from __future__ import annotations

import getpass
import re
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import mlflow
import pytest
import torch
from conftest import REPO
from mlflow.tracking import MlflowClient

from bitune.data.demo import make_demo_frame
from bitune.data.prepare_splits import prepare_splits
from bitune.data.prepared import PreparedData
from bitune.model.classifier import ClassifierMeta, load_tokenizer, save_classifier
from bitune.model.pretrained import build_model
from bitune.params import Params, load_params
from tasks import tracking
from tasks.data import DataVersion
from tasks.evaluate import Evaluation
from tasks.logged_model import pip_requirements, public_version
from tasks.registry import register_fn
from tasks.runs import open_parent_run_fn
from tasks.tracking import TrackingSettings

NAME = "bitune-classifier"
MD5 = "0123456789abcdef0123456789abcdef.dir"


@dataclass(frozen=True)
class Registered:
    settings: TrackingSettings
    runs: list[str]  # parent run ids, version 1 first

    def client(self) -> MlflowClient:
        return self.settings.client()


def saved_classifier(params: Params, prepared: PreparedData, folder: Path, seed: int) -> Path:
    model, _ = build_model(params, len(prepared.labels), None)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for p in model.head.parameters():
            p.copy_(torch.randn_like(p) * 3)
    meta = ClassifierMeta.for_training(prepared.labels, params.model, params.preprocess)
    return save_classifier(model, load_tokenizer(params.model), meta, folder)


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Registered:
    """Two versions registered from parent runs both named `retrain`, as a rerun's would be."""
    root = tmp_path_factory.mktemp("run-metadata")
    (root / "data").mkdir()
    make_demo_frame(80, 0).to_csv(root / "data" / "reviews.csv", index=False)
    params = load_params(REPO / "params" / "default.yaml", [f"model.name_or_path={tiny_bert_dir}"])
    settings = TrackingSettings(f"sqlite:///{root / 'mlflow.db'}", "bitune", (root / "mlartifacts").as_uri())
    prepared = prepare_splits(params, MD5, root)
    runs = []
    for seed, scores in ((1, {"test/macro_f1": 0.8, "test/accuracy": 0.81}), (2, {"test/macro_f1": 0.7})):
        model_dir = saved_classifier(params, prepared, root / f"model-{seed}", seed)
        parent = tracking.start_run(settings, "retrain", {"bitune.phase": "retrain"})
        evaluation = Evaluation(scores | {"test/cka_to_pretrained": 0.9}, None, [])
        # the champion is re-scored on the test rows: version 2's logged 0.7 may win or lose against it
        register_fn(params, prepared, evaluation, str(model_dir), MD5, settings, parent)
        runs.append(parent)
    return Registered(settings, runs)


def test_the_gate_decision_is_the_description_of_the_version_and_of_its_run(registered: Registered) -> None:
    client = registered.client()
    first = client.get_model_version(NAME, "1")
    assert first.description.startswith(
        f"{NAME} version 1, promoted to **champion** at registration (data version `{MD5}`)."
    )
    assert "Gate: no champion yet" in first.description
    assert "| test/macro_f1 | 0.8000 |" in first.description
    assert "| test/accuracy | 0.8100 |" in first.description
    assert "| test/cka_to_pretrained | 0.9000 |" in first.description

    second = client.get_model_version(NAME, "2")
    champion = str(client.get_model_version_by_alias(NAME, "champion").version)
    outcome = "promoted to **champion**" if champion == "2" else "kept as **challenger**"
    assert second.description.startswith(f"{NAME} version 2, {outcome} at registration")
    assert f"Gate: {second.tags['bitune.gate'].partition(': ')[2]}" in second.description

    for number, run_id in enumerate(registered.runs, 1):
        note = client.get_run(run_id).data.tags["mlflow.note.content"]
        described = client.get_model_version(NAME, str(number)).description
        assert note == f"{described}\n\nModel: `models:/{NAME}/{number}`"


def test_reruns_with_one_name_are_told_apart_by_their_version(registered: Registered) -> None:
    client = registered.client()
    names = [client.get_run(run_id).info.run_name for run_id in registered.runs]
    assert names == ["retrain-v1", "retrain-v2"]


def test_every_run_records_its_user_and_source(registered: Registered) -> None:
    client = registered.client()
    parent = registered.runs[0]
    nested = tracking.start_run(registered.settings, "evaluate", {}, parent)
    for run_id in (parent, nested):
        run = client.get_run(run_id)
        assert run.info.user_id == getpass.getuser()  # the UI's User column; `unknown` before
        assert run.data.tags["mlflow.user"] == getpass.getuser()
        assert run.data.tags["mlflow.source.name"] == "bitune retrain"
        assert run.data.tags["mlflow.source.type"] == "LOCAL"
    tracking.end_run(registered.settings, nested)


def test_the_model_environment_pins_versions_a_public_index_serves(registered: Registered) -> None:
    assert public_version("2.13.0+cpu") == "2.13.0"
    assert public_version("2.13.0+cu128") == "2.13.0"
    assert public_version("6.0.3") == "6.0.3"
    uri = registered.client().get_model_version_download_uri(NAME, "1")
    folder = mlflow.artifacts.download_artifacts(
        f"{uri}/requirements.txt", tracking_uri=registered.settings.uri
    )
    lines = Path(folder).read_text().split()
    assert lines == pip_requirements()
    assert f"torch=={version('torch').partition('+')[0]}" in lines  # this machine's torch may be `+cpu`
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.]*", line) for line in lines), lines


@pytest.mark.slow  # a Prefect server
def test_a_parent_run_leads_to_its_prefect_flow_run_and_has_no_empty_tags(tmp_path: Path, prefect_db) -> None:  # type: ignore[no-untyped-def]
    from prefect import flow
    from prefect.runtime import flow_run

    params = load_params(REPO / "params" / "default.yaml")
    settings = TrackingSettings.from_params(params.tracking, tmp_path)
    data = DataVersion(md5=MD5, path="data", remote="r", changed=True)
    prepared = PreparedData(
        folder=str(tmp_path / "prepared"), labels=["neg", "pos"], sizes={"train": 8}, key="k"
    )

    @flow(name="open-run")
    def opened() -> tuple[str, str]:
        run_id = open_parent_run_fn(settings, params, data, prepared, "key-1", tmp_path, tmp_path / "p.json")
        return run_id, str(flow_run.id)

    run_id, flow_run_id = opened()
    tags = settings.client().get_run(run_id).data.tags
    assert tags["prefect.flow_run_id"] == flow_run_id
    assert tags["prefect.flow_run_name"]
    assert "bitune.closed_stale_runs" not in tags  # it was "" on every run that closed none

    # the first run is still RUNNING under key-1: the next one closes it and says so
    again = open_parent_run_fn(settings, params, data, prepared, "key-1", tmp_path, tmp_path / "p.json")
    tags = settings.client().get_run(again).data.tags
    assert tags["bitune.closed_stale_runs"] == run_id
    assert "prefect.flow_run_id" not in tags  # opened outside a flow run
