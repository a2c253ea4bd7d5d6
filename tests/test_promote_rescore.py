"""`bitune promote` of a version scored on other test rows than the champion: a re-score on the rows
of a local test split that neither trained on decides, or, with no such split, the gate refuses.

A real project folder and MLflow SQLite store; two untrained tiny-BERT classifiers (random heads, so
their losses differ on every row) registered by the registry task from splits made with different
`data.split.seed`, each carrying the record of its own train and validation rows. The losses they
logged are set the wrong way round, so a decision on logged scores cannot pass for one on fresh scores.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import make_project
from mlflow.tracking import MlflowClient
from test_registry_champion import saved_classifier
from typer.testing import CliRunner

from bitune.data.demo import make_demo_frame
from bitune.data.prepare_splits import prepare_splits
from bitune.data.prepared import PREPARED, PreparedData
from bitune.data.splits import split_key
from bitune.evaluation.metrics import summary_metrics
from bitune.model.classifier import load_classifier
from bitune.params import Params, load_params
from bitune.promotion import StoredScores, needs_rescore
from flows.cli import app
from tasks import tracking
from tasks.evaluate import Evaluation
from tasks.registry import register_fn
from tasks.tracking import TrackingSettings

NAME = "bitune-classifier"
MD5 = "0123456789abcdef0123456789abcdef.dir"
CKA = "test/cka_to_pretrained"
RESET_TAGS = ("bitune.previous_champion", "bitune.manual_gate", "bitune.promotion")


@dataclass(frozen=True)
class Version:
    number: str
    prepared: PreparedData  # the split it was trained and scored on
    model_dir: Path
    split: str = ""  # its `bitune.test_split`


@dataclass(frozen=True)
class Project:
    root: Path
    settings: TrackingSettings
    better: Version  # lower loss on the rows neither trained on
    worse: Version
    blind: Version  # has seen every text, so no test row is left to compare it on

    def client(self) -> MlflowClient:
        return self.settings.client()


def texts_of(prepared: PreparedData, *splits: str) -> list[str]:
    return [t for s in splits for t in pd.read_parquet(prepared.split_file(s))["text"]]


def rows_neither_saw(local: PreparedData, *trained: PreparedData) -> pd.DataFrame:
    """The local test rows whose split key is in no train or validation split of `trained`."""
    seen = {split_key(t) for p in trained for t in texts_of(p, "train", "validation")}
    test = pd.read_parquet(local.split_file("test"))
    return test[[split_key(t) not in seen for t in test["text"]]]


def loss_on(model_dir: Path, rows: pd.DataFrame) -> float:
    """The model's mean cross-entropy on `rows`, tokenized as it was trained (not through bitune's
    re-score code path)."""
    model, tokenizer, meta = load_classifier(model_dir)
    texts = rows["text"].str.lower() if meta.lowercase else rows["text"]
    enc = tokenizer(
        texts.tolist(),
        truncation=True,
        max_length=meta.max_length,
        padding=True,
        return_tensors="pt",
        return_token_type_ids=False,
    )
    with torch.inference_mode():
        logits = model(enc["input_ids"], enc["attention_mask"])
    labels = torch.as_tensor([meta.labels.index(label) for label in rows["label"]])
    return summary_metrics(logits, labels)["loss"]


def register(settings: TrackingSettings, params: Params, version: Version, logged_loss: float) -> None:
    parent = tracking.start_run(settings, "retrain", {"bitune.phase": "retrain"})
    scores = {"test/loss": logged_loss, CKA: 0.9}
    register_fn(
        params, version.prepared, Evaluation(scores, None, []), str(version.model_dir), MD5, settings, parent
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Project:
    root = make_project(tmp_path_factory.mktemp("promote-rescore"), tiny_bert_dir)
    params_file = root / "params" / "default.yaml"
    tree = yaml.safe_load(params_file.read_text())
    tree["model"]["name_or_path"] = str(tiny_bert_dir)
    tree["registry"]["metric"] = "test/loss"  # moves with every row: no ties between random heads
    params_file.write_text(yaml.safe_dump(tree))
    (root / "data").mkdir()
    make_demo_frame(600, 0).to_csv(root / "data" / "reviews.csv", index=False)

    params_a = load_params(params_file)
    params_b = load_params(params_file, ["data.split.seed=1"])  # a re-split: other test rows
    settings = TrackingSettings.from_params(params_a.tracking, root)
    split_a, split_b = prepare_splits(params_a, MD5, root), prepare_splits(params_b, MD5, root)
    model_a = saved_classifier(
        params_a, split_a, root / "a", seed=1, seen_texts=texts_of(split_a, "train", "validation")
    )
    model_b = saved_classifier(
        params_b, split_b, root / "b", seed=2, seen_texts=texts_of(split_b, "train", "validation")
    )
    everything = texts_of(split_a, "train", "validation", "test")
    model_c = saved_classifier(params_a, split_a, root / "c", seed=3, seen_texts=everything)

    unseen = rows_neither_saw(split_b, split_a, split_b)
    a_wins = loss_on(model_a, unseen) < loss_on(model_b, unseen)
    a = Version("1", split_a, model_a)
    b = Version("2", split_b, model_b)
    better, worse = (a, b) if a_wins else (b, a)
    # logged the wrong way round: the logged scores alone would choose the other way
    register(settings, params_a, a, 9.0 if a_wins else 0.01)
    register(settings, params_b, b, 0.01 if a_wins else 9.0)
    register(settings, params_a, Version("3", split_a, model_c), 0.01)
    client = settings.client()

    def recorded(v: Version) -> Version:
        return Version(
            v.number,
            v.prepared,
            v.model_dir,
            client.get_model_version(NAME, v.number).tags["bitune.test_split"],
        )

    blind = recorded(Version("3", split_a, model_c))
    return Project(root, settings, recorded(better), recorded(worse), blind)


@pytest.fixture
def client(project: Project) -> MlflowClient:
    """The registry with no manual decisions or promotion links; each test sets its own champion."""
    mlflow_client = project.client()
    for version in ("1", "2", "3"):
        tags = mlflow_client.get_model_version(NAME, version).tags
        for tag in RESET_TAGS:
            if tag in tags:
                mlflow_client.delete_model_version_tag(NAME, version, tag)
    return mlflow_client


def bitune(root: Path, *args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, [*args, "--project", str(root)], env={"COLUMNS": "400"})


def champion(client: MlflowClient) -> str:
    return str(client.get_model_version_by_alias(NAME, "champion").version)


def registry_state(client: MlflowClient) -> dict[str, object]:
    """Every version's tags but the manual gate's, and every alias."""
    state: dict[str, object] = {"aliases": client.get_registered_model(NAME).aliases}
    for version in ("1", "2", "3"):
        tags = client.get_model_version(NAME, version).tags
        state[version] = {k: v for k, v in tags.items() if k != "bitune.manual_gate"}
    return state


def one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("(details in "), lines
    return lines[0]


def local_split(project: Project, version: Version) -> tuple[pd.DataFrame, int, str]:
    """The rows of `version`'s test split neither version 1 nor 2 trained on, its size, its file."""
    unseen = rows_neither_saw(version.prepared, project.better.prepared, project.worse.prepared)
    file = version.prepared.split_file("test")
    return unseen, len(pd.read_parquet(file)), str(file.relative_to(project.root))


def test_promote_decides_on_both_rescored_on_rows_neither_trained_on(
    project: Project, client: MlflowClient
) -> None:
    better, worse = project.better, project.worse
    assert better.split != worse.split
    client.set_registered_model_alias(NAME, "champion", worse.number)
    unseen, total, file = local_split(project, better)  # the challenger's split comes first
    assert 0 < len(unseen) < total  # the champion's training rows were left out
    fresh_better, fresh_worse = loss_on(better.model_dir, unseen), loss_on(worse.model_dir, unseen)

    result = bitune(project.root, "promote", better.number)
    assert result.exit_code == 0, result.output
    assert champion(client) == better.number
    assert (
        f"Re-scored version {better.number} and champion version {worse.number} on the {len(unseen)} of "
        f"{total} rows of {file} that neither trained on." in result.stdout
    )
    tags = client.get_model_version(NAME, better.number).tags
    note = (
        f"re-scored both on {len(unseen)} test rows neither trained on, "
        f"of {total} in local test split {better.split}"
    )
    assert tags["bitune.manual_gate"] == (
        f"promote: {note}; test/loss {fresh_better:.4f} vs champion {fresh_worse:.4f} "
        f"(lower is better, gain {fresh_worse - fresh_better:+.4f}, needs > 0); "
        "CKA to pretrained unchanged (allowed drop 0.0500)"
    )
    assert tags["bitune.previous_champion"] == worse.number
    assert tags["bitune.promotion"] == f"manual {tags['bitune.manual_gate']}"
    assert note in result.stdout


def test_a_challenger_worse_on_the_unseen_rows_is_refused(project: Project, client: MlflowClient) -> None:
    better, worse = project.better, project.worse
    client.set_registered_model_alias(NAME, "champion", better.number)
    unseen, total, _ = local_split(project, worse)
    fresh_better, fresh_worse = loss_on(better.model_dir, unseen), loss_on(worse.model_dir, unseen)
    before = registry_state(client)

    line = one_line_error(bitune(project.root, "promote", worse.number))
    assert line == (
        f"error: promote: the gate kept version {better.number} as champion over version {worse.number} "
        f"(re-scored both on {len(unseen)} test rows neither trained on, of {total} in local test split "
        f"{worse.split}; test/loss {fresh_worse:.4f} vs champion {fresh_better:.4f} (lower is better, gain "
        f"{fresh_better - fresh_worse:+.4f}, needs > 0); CKA to pretrained unchanged (allowed drop 0.0500)); "
        "use --force to promote anyway"
    )
    assert champion(client) == better.number
    assert registry_state(client) == before  # only the manual gate's tag is new
    gate = client.get_model_version(NAME, worse.number).tags["bitune.manual_gate"]
    assert gate.startswith(f"keep champion: re-scored both on {len(unseen)} test rows")


def old_refusal(challenger: Version, champion_version: Version) -> str:
    return (
        f"error: promote: the gate kept version {champion_version.number} as champion over version "
        f"{challenger.number} (scored on different test rows (version {challenger.number} on split "
        f"{challenger.split}, champion version {champion_version.number} on {champion_version.split}: "
        "the data or data.split changed), so the scores do not compare and either may have trained on the "
        "other's test rows; let the flow's gate decide (`bitune run` re-scores the champion on the rows it "
        "has not seen) or promote with --force)"
    )


@pytest.fixture
def no_local_split(project: Project) -> Iterator[None]:
    """The project's prepared splits gone, as on a machine that did not run these versions."""
    prepared = project.root / PREPARED
    away = prepared.with_name("prepared-away")
    prepared.rename(away)
    try:
        yield
    finally:
        shutil.rmtree(prepared, ignore_errors=True)
        away.rename(prepared)


def test_without_a_local_test_split_the_gate_refuses_as_before(
    project: Project, client: MlflowClient, no_local_split: None
) -> None:
    better, worse = project.better, project.worse
    client.set_registered_model_alias(NAME, "champion", worse.number)
    before = registry_state(client)
    line = one_line_error(bitune(project.root, "promote", better.number))
    assert line == old_refusal(better, worse)
    assert champion(client) == worse.number and registry_state(client) == before


def test_no_row_left_unseen_by_both_refuses_as_before(project: Project, client: MlflowClient) -> None:
    """The local split is there, but the champion trained on all of it: nothing fair to re-score on."""
    challenger = project.better if project.better.number == "2" else project.worse  # the other split
    assert challenger.split != project.blind.split
    client.set_registered_model_alias(NAME, "champion", project.blind.number)
    before = registry_state(client)
    line = one_line_error(bitune(project.root, "promote", challenger.number))
    assert line == old_refusal(challenger, project.blind)
    assert champion(client) == project.blind.number and registry_state(client) == before


def test_only_scores_on_other_rows_with_the_same_labels_call_for_a_re_score() -> None:
    """Pure: a re-score settles other test rows (recorded, or unrecorded on other data), not other labels."""
    two = {"test/support/neg": 5.0, "test/support/pos": 5.0}
    assert needs_rescore(StoredScores("2", two, "d1", "s2"), StoredScores("1", two, "d1", "s1"))
    assert not needs_rescore(StoredScores("2", two, "d2", "s1"), StoredScores("1", two, "d1", "s1"))
    assert needs_rescore(StoredScores("2", two, "d2", "s2"), StoredScores("1", two, "d1", None))
    assert not needs_rescore(StoredScores("2", two, "d1", "s2"), StoredScores("1", two, "d1", None))
    three = two | {"test/support/meh": 2.0}
    assert not needs_rescore(StoredScores("2", three, "d1", "s2"), StoredScores("1", two, "d1", "s1"))
    assert not needs_rescore(StoredScores("2", two, "d1", "s2"), None)


def test_logging_a_model_version_prints_no_mlflow_info_line(project: Project) -> None:
    """Every run registers a model; MLflow's "Validating input example" INFO line is noise there."""
    import logging

    from mlflow.entities import LoggedModelStatus

    from tasks.logged_model import log_model

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    pyfunc_log.addHandler(handler)
    try:
        run = tracking.start_run(project.settings, "log-model", {"bitune.phase": "retrain"})
        logged = log_model(project.settings, run, project.better.model_dir, ["good", "bad"])
    finally:
        pyfunc_log.removeHandler(handler)
    assert (logged.source_run_id, logged.status.to_int()) == (run, LoggedModelStatus.READY.to_int())
    assert [r.getMessage() for r in records if r.levelno < logging.WARNING] == []
    assert pyfunc_log.level == logging.NOTSET  # put back as it was
