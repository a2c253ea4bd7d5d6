"""Each registered version is an MLflow 3 logged model of its parent run, and versions registered the
old way (a folder of the run's artifacts) still load, score and move in the same registry.

A real SQLite store. Version 1 is registered as bitune did before logged models: the pyfunc uploaded to
the run's `model/` folder and the version's source that folder. Version 2 goes through the registry
task, whose gate re-scores version 1. Registration runs from a folder that is not the project, as a
Prefect worker or `bitune run --project` does: MLflow's global tracking URI must play no part.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml
from conftest import REPO
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient
from test_registry_champion import direct_scores, saved_classifier

from bitune.data.demo import make_demo_frame
from bitune.data.prepare_splits import prepare_splits
from bitune.data.prepared import PreparedData
from bitune.data.seen import split_digest
from bitune.model.classifier import load_classifier
from bitune.params import Params, load_params
from tasks import tracking
from tasks.evaluate import Evaluation
from tasks.logged_model import log_model, save_pyfunc
from tasks.promotion import DATA_VERSION, TEST_SPLIT, download_classifier, promote, rollback
from tasks.registry import champion_metrics, register_fn
from tasks.tracking import TrackingSettings

NAME = "bitune-classifier"
MD5 = "0123456789abcdef0123456789abcdef.dir"
TEXTS = ["a great film, i loved the story", "the worst book of the year"]


@dataclass(frozen=True)
class Store:
    root: Path
    settings: TrackingSettings
    params: Params
    prepared: PreparedData
    models: dict[str, Path]  # version to its classifier folder
    runs: dict[str, str]  # version to its parent run
    elsewhere: Path  # the folder registration ran from

    def client(self) -> MlflowClient:
        return self.settings.client()


def register_the_old_way(
    settings: TrackingSettings, params: Params, prepared: PreparedData, model: Path
) -> str:
    """What `register_fn` did before logged models: the pyfunc in the run's artifacts, that folder the
    version's source, the alias set directly."""
    client = settings.client()
    run = tracking.start_run(settings, "retrain", {"bitune.phase": "retrain"})
    tracking.log_metrics(settings, run, direct_scores(model, prepared) | {"test/cka_to_pretrained": 0.9})
    test = pd.read_parquet(prepared.split_file("test"))
    with tempfile.TemporaryDirectory() as tmp:
        save_pyfunc(Path(tmp) / "model", model, test["text"].tolist())
        client.log_artifacts(run, str(Path(tmp) / "model"), "model")
    client.create_registered_model(NAME)
    mv = client.create_model_version(
        NAME,
        source=f"{client.get_run(run).info.artifact_uri}/model",
        run_id=run,
        tags={
            DATA_VERSION: MD5,
            TEST_SPLIT: split_digest(test["text"].tolist(), test["label"].tolist()),
            "bitune.source": f"runs:/{run}/model",
        },
    )
    client.set_model_version_tag(NAME, mv.version, "bitune.promotion", "promote: no champion yet")
    client.set_registered_model_alias(NAME, "champion", mv.version)
    tracking.end_run(settings, run)
    return run


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Store:
    root = tmp_path_factory.mktemp("logged-model")
    (root / "data").mkdir()
    make_demo_frame(80, 0).to_csv(root / "data" / "reviews.csv", index=False)
    params = load_params(REPO / "params" / "default.yaml", [f"model.name_or_path={tiny_bert_dir}"])
    settings = TrackingSettings(f"sqlite:///{root / 'mlflow.db'}", "bitune", (root / "mlartifacts").as_uri())
    prepared = prepare_splits(params, MD5, root)
    models = {v: saved_classifier(params, prepared, root / f"model-{v}", seed=int(v)) for v in ("1", "2")}
    runs = {"1": register_the_old_way(settings, params, prepared, models["1"])}

    elsewhere = tmp_path_factory.mktemp("cwd")
    before = (mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI"))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(elsewhere)
        run = tracking.start_run(settings, "bidirectional-01234567", {"bitune.phase": "retrain"})
        evaluation = Evaluation(
            direct_scores(models["2"], prepared) | {"test/cka_to_pretrained": 0.9}, None, []
        )
        register_fn(params, prepared, evaluation, str(models["2"]), MD5, settings, run)
        runs["2"] = run
    assert (mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")) == before
    return Store(root, settings, params, prepared, models, runs, elsewhere)


def test_a_registered_version_is_a_logged_model_of_its_run(store: Store) -> None:
    client = store.client()
    mv = client.get_model_version(NAME, "2")
    assert mv.source.startswith("models:/m-") and mv.run_id == store.runs["2"]
    model_id = mv.source.removeprefix("models:/")
    assert mv.tags["bitune.source"] == mv.source
    model = client.get_logged_model(model_id)
    assert model.status == LoggedModelStatus.READY
    assert model.source_run_id == store.runs["2"] and model.name == "bidirectional-01234567"
    run = client.get_run(store.runs["2"])
    assert model.experiment_id == run.info.experiment_id
    assert model_id in [m.model_id for m in run.outputs.model_outputs]  # the run page's logged models
    # the experiment's Models tab lists it, with the version it was registered as
    listed = client.search_logged_models([run.info.experiment_id])
    assert [m.model_id for m in listed if m.source_run_id in store.runs.values()] == [model_id]
    assert json.loads(model.tags["mlflow.modelVersions"]) == [{"name": NAME, "version": "2"}]
    assert model.tags["bitune.data_version"] == MD5 and model.tags["bitune.strategy"] == "bidirectional"
    assert model.tags["bitune.params_digest"] == store.params.digest()
    assert model.tags["bitune.test_split"] == mv.tags["bitune.test_split"]
    assert model.tags["mlflow.user"] and model.params == run.data.params
    # the test scores on the model's page, and on the run as before
    scores = {m.key: m.value for m in model.metrics or []}
    assert scores["test/macro_f1"] == pytest.approx(run.data.metrics["test/macro_f1"])
    assert {"test/accuracy", "test/loss", "test/cka_to_pretrained"} <= set(scores)
    # the files are the logged model's, and the MLmodel file names it and its run
    assert client.get_model_version_download_uri(NAME, "2") == model.artifact_location
    mlmodel = yaml.safe_load(Path(mlflow.artifacts.download_artifacts(
        f"{model.artifact_location}/MLmodel", tracking_uri=store.settings.uri
    )).read_text())  # fmt: skip
    assert (mlmodel["model_id"], mlmodel["run_id"]) == (model_id, store.runs["2"])
    assert not (store.elsewhere / "mlflow.db").exists()  # no stray store where registration ran


@pytest.mark.parametrize("version", ["1", "2"])
def test_old_and_new_versions_load_and_score(store: Store, version: str, tmp_path: Path) -> None:
    folder = download_classifier(store.settings, NAME, version, tmp_path)
    expected = direct_scores(store.models[version], store.prepared)
    model, _, meta = load_classifier(folder)
    assert meta.labels == load_classifier(store.models[version])[2].labels
    with pytest.MonkeyPatch.context() as env:  # a user's script: the registry by URI
        env.setenv("MLFLOW_REGISTRY_URI", store.settings.uri)
        env.setenv("MLFLOW_TRACKING_URI", store.settings.uri)
        env.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
        pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}/{version}")
    out = pyfunc.predict(pd.DataFrame({"text": TEXTS}))
    assert list(out.columns) == ["label", "score", *(f"prob_{label}" for label in meta.labels)]
    test = pd.read_parquet(store.prepared.split_file("test"))
    accuracy = (pyfunc.predict(test[["text"]])["label"] == test["label"]).mean()
    assert accuracy == pytest.approx(expected["test/accuracy"])
    assert sum(p.numel() for p in model.parameters()) > 0


def test_the_gate_rescored_the_old_style_champion(store: Store) -> None:
    gate = store.client().get_model_version(NAME, "2").tags["bitune.gate"]
    champion = direct_scores(store.models["1"], store.prepared)["test/macro_f1"]
    assert f"vs champion {champion:.4f}" in gate


def test_old_and_new_versions_promote_and_roll_back_either_way(store: Store) -> None:
    client = store.client()
    start = str(client.get_model_version_by_alias(NAME, "champion").version)
    other = "2" if start == "1" else "1"
    done = promote(store.settings, store.params, other, force=True)
    assert (done.version, done.replaced) == (other, start)
    scored = champion_metrics(store.settings, NAME, store.params, store.prepared)
    assert scored.version == other and scored.scores is not None
    expected = direct_scores(store.models[other], store.prepared)
    assert scored.scores["test/macro_f1"] == pytest.approx(expected["test/macro_f1"], abs=1e-5)
    back = rollback(store.settings, NAME)
    assert back.version == start and str(client.get_model_version_by_alias(NAME, "champion").version) == start
    assert champion_metrics(store.settings, NAME, store.params, store.prepared).version == start


def test_a_failed_upload_leaves_the_logged_model_failed(store: Store, tmp_path: Path) -> None:
    client = store.client()
    run = tracking.start_run(store.settings, "broken", {"bitune.phase": "retrain"})
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    with pytest.raises(Exception):  # noqa: B017, PT011 - whatever the loader raises on an empty folder
        log_model(store.settings, run, not_a_model, TEXTS, metrics={"test/accuracy": 0.5})
    (model,) = [m for m in client.search_logged_models([client.get_run(run).info.experiment_id])
                if m.source_run_id == run]  # fmt: skip
    assert model.status == LoggedModelStatus.FAILED
    assert client.list_artifacts(run) == []  # nothing half-uploaded into the run
