"""The registry task's view of the champion, on a real SQLite store and real saved classifiers.

Champion (version 1) is a tiny BERT with a cased letters-only vocabulary, trained on lowercased text
cut at 8 tokens; the challenger is the session's tiny BERT with a word vocabulary (ids past the
champion's embedding table), cased text and `max_length` 64. The champion must be re-scored with its
own normalisation, tokenizer and length, and a registry that cannot say who the champion is must
stop the run, not promote.
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import REPO
from mlflow.tracking import MlflowClient
from transformers import BertConfig, BertModel, BertTokenizerFast

from bitune.data.demo import make_demo_frame
from bitune.data.prepare_splits import prepare_splits
from bitune.data.prepared import PreparedData
from bitune.errors import TrackingError
from bitune.evaluation.metrics import summary_metrics
from bitune.model.classifier import ClassifierMeta, load_classifier, load_tokenizer, save_classifier
from bitune.model.pretrained import build_model
from bitune.params import Params, load_params
from tasks import tracking
from tasks.evaluate import Evaluation
from tasks.registry import champion_metrics, register_fn
from tasks.tracking import TrackingSettings

NAME = "bitune-classifier"
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]


@dataclass(frozen=True)
class Store:
    root: Path
    settings: TrackingSettings
    params_a: Params
    params_b: Params
    prepared_b: PreparedData
    champion_dir: Path
    challenger_dir: Path

    def client(self) -> MlflowClient:
        return self.settings.client()


def letters_bert(folder: Path) -> Path:
    """A tiny BERT whose vocabulary is letters only: 5 + 26 + 26 + 1 ids, far fewer than the word BERT."""
    folder.mkdir(parents=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *LETTERS, *(f"##{c}" for c in LETTERS), ","]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        BertModel(config).save_pretrained(folder, safe_serialization=True)
    tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"), model_max_length=64, do_lower_case=False)
    tokenizer.save_pretrained(folder)
    return folder


def saved_classifier(
    params: Params, prepared: PreparedData, folder: Path, seed: int, seen_texts: list[str] | None = None
) -> Path:
    """An untrained classifier with a large random head, so its loss moves with every input token."""
    model, _ = build_model(params, len(prepared.labels), None)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for p in model.head.parameters():
            p.copy_(torch.randn_like(p) * 3)
    meta = ClassifierMeta.for_training(prepared.labels, params.model, params.preprocess)
    return save_classifier(model, load_tokenizer(params.model), meta, folder, seen_texts=seen_texts)


def direct_scores(model_dir: Path, prepared: PreparedData, skip: int = 0) -> dict[str, float]:
    """The model on the test split's text (less its first `skip` rows), normalised, tokenized and cut
    as it was trained."""
    model, tokenizer, meta = load_classifier(model_dir)
    test = pd.read_parquet(prepared.split_file("test")).iloc[skip:]
    texts = test["text"].str.lower() if meta.lowercase else test["text"]
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
    labels = torch.as_tensor([meta.labels.index(label) for label in test["label"]])
    return {f"test/{k}": v for k, v in summary_metrics(logits, labels).items()}


def register(store: Store, params: Params, prepared: PreparedData, model_dir: Path) -> None:
    parent = tracking.start_run(store.settings, "retrain", {"bitune.phase": "retrain"})
    scores = direct_scores(model_dir, prepared)
    register_fn(
        params,
        prepared,
        Evaluation(scores, None, []),
        str(model_dir),
        "md5-of-the-data",
        store.settings,
        parent,
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path) -> Store:
    root = tmp_path_factory.mktemp("registry-champion")
    (root / "data").mkdir()
    make_demo_frame(80, 0).to_csv(root / "data" / "reviews.csv", index=False)
    common = ["strategy.phases.0.epochs=1", "strategy.phases.1.epochs=1", "train.eval_batch_size=7"]
    params_a = load_params(
        REPO / "params" / "default.yaml",
        [
            f"model.name_or_path={letters_bert(root / 'letters-bert')}",
            "preprocess.max_length=8",
            "preprocess.lowercase=true",
            *common,
        ],
    )
    params_b = load_params(REPO / "params" / "default.yaml", [f"model.name_or_path={tiny_bert_dir}", *common])
    settings = TrackingSettings(
        uri=f"sqlite:///{root / 'mlflow.db'}",
        experiment="bitune",
        artifact_location=(root / "mlartifacts").as_uri(),
    )
    prepared_a = prepare_splits(params_a, "md5-of-the-data", root)
    prepared_b = prepare_splits(params_b, "md5-of-the-data", root)
    champion_dir = saved_classifier(params_a, prepared_a, root / "champion", seed=1)
    challenger_dir = saved_classifier(params_b, prepared_b, root / "challenger", seed=2)
    built = Store(root, settings, params_a, params_b, prepared_b, champion_dir, challenger_dir)
    register(built, params_a, prepared_a, champion_dir)
    assert str(built.client().get_model_version_by_alias(NAME, "champion").version) == "1"
    return built


def test_champion_is_rescored_with_its_own_tokenizer_and_length(store: Store) -> None:
    # the challenger's ids run past the champion's embedding table: reusing them cannot work
    champion_vocab = load_classifier(store.champion_dir)[0].backbone.config.vocab_size
    texts = pd.read_parquet(store.prepared_b.split_file("test"))["text"].tolist()
    challenger_ids = load_classifier(store.challenger_dir)[1](texts)["input_ids"]
    assert max(max(ids) for ids in challenger_ids) >= champion_vocab
    assert any(text != text.lower() for text in texts)  # the challenger's split keeps capitals

    champion = champion_metrics(store.settings, NAME, store.params_b, store.prepared_b)
    assert champion.version == "1" and champion.scores
    scores = champion.scores
    expected = direct_scores(store.champion_dir, store.prepared_b)
    for key in ("test/loss", "test/accuracy", "test/macro_f1", "test/ece"):
        assert scores[key] == pytest.approx(expected[key], abs=1e-5), key
    # the per-class F1 the challenger logs can be compared too
    assert set(scores) >= {f"test/f1/{label}" for label in store.prepared_b.labels}

    # and the whole registration goes through the gate with it
    register(store, store.params_b, store.prepared_b, store.challenger_dir)
    tags = store.client().get_model_version(NAME, "2").tags
    assert f"vs champion {expected['test/macro_f1']:.4f}" in tags["bitune.gate"]
    # a champion saved without a record of its training rows is compared on all of them, and it says so
    assert f"compared on all {len(texts)} test rows: the champion has no record" in tags["bitune.gate"]
    assert (tags["bitune.gate_test_rows"], tags["bitune.gate_excluded_rows"]) == (str(len(texts)), "unknown")


def own_registry(store: Store, tmp_path: Path) -> Store:
    """The store's data and models with an empty registry of its own."""
    settings = TrackingSettings(
        uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        experiment="bitune",
        artifact_location=(tmp_path / "mlartifacts").as_uri(),
    )
    return replace(store, settings=settings)


def test_champion_is_compared_only_on_test_rows_it_has_not_trained_on(store: Store, tmp_path: Path) -> None:
    """After a re-split, some of today's test rows were the champion's training rows: both models are
    scored on the rest, through the same code path, and the tags and the reason say so."""
    own = own_registry(store, tmp_path)
    # gate on the loss: it moves with every row, so a score on all rows cannot pass for one on the rest
    params = store.params_b.model_copy(
        update={"registry": store.params_b.registry.model_copy(update={"metric": "test/loss"})}
    )
    prepared = store.prepared_b
    test = pd.read_parquet(prepared.split_file("test"))
    moved = 5  # the first test rows were in the champion's train split under the old data.split
    seen = [
        *pd.read_parquet(prepared.split_file("train"))["text"],
        *pd.read_parquet(prepared.split_file("validation"))["text"],
        *test["text"].iloc[:moved].str.upper(),  # the same rows by split key, whatever the case
    ]
    champion_dir = saved_classifier(params, prepared, tmp_path / "champion", seed=3, seen_texts=seen)
    register(own, params, prepared, champion_dir)  # no champion yet: promoted
    register(own, params, prepared, store.challenger_dir)

    tags = own.client().get_model_version(NAME, "2").tags
    kept = len(test) - moved
    assert (tags["bitune.gate_test_rows"], tags["bitune.gate_excluded_rows"]) == (str(kept), str(moved))
    gate = tags["bitune.gate"]
    assert (
        f"compared on {kept} of {len(test)} test rows: {moved} were in the champion's training data" in gate
    )
    champion_unseen = direct_scores(champion_dir, prepared, skip=moved)["test/loss"]
    challenger_unseen = direct_scores(store.challenger_dir, prepared, skip=moved)["test/loss"]
    # on all rows both scores would read otherwise
    assert f"{direct_scores(champion_dir, prepared)['test/loss']:.4f}" != f"{champion_unseen:.4f}"
    assert f"{direct_scores(store.challenger_dir, prepared)['test/loss']:.4f}" != f"{challenger_unseen:.4f}"
    assert f"test/loss {challenger_unseen:.4f} vs champion {champion_unseen:.4f}" in gate


def test_a_champion_that_trained_on_every_test_row_is_kept_with_the_fix(store: Store, tmp_path: Path) -> None:
    own = own_registry(store, tmp_path)
    test = pd.read_parquet(store.prepared_b.split_file("test"))
    champion_dir = saved_classifier(
        store.params_b, store.prepared_b, tmp_path / "champion", seed=3, seen_texts=test["text"].tolist()
    )
    register(own, store.params_b, store.prepared_b, champion_dir)
    register(own, store.params_b, store.prepared_b, store.challenger_dir)

    client = own.client()
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    tags = client.get_model_version(NAME, "2").tags
    assert (tags["bitune.gate_test_rows"], tags["bitune.gate_excluded_rows"]) == ("0", str(len(test)))
    assert tags["bitune.gate"].startswith(f"keep champion: all {len(test)} test rows were in the champion's")
    assert tags["bitune.gate"].endswith("or promote manually with `bitune promote 2 --force`")


@contextmanager
def aliases_unreadable(db: Path) -> Iterator[None]:
    """The store's alias table out of reach, as a half-migrated or damaged database leaves it."""
    with sqlite3.connect(db) as conn:
        conn.execute("ALTER TABLE registered_model_aliases RENAME TO registered_model_aliases_away")
    try:
        yield
    finally:
        with sqlite3.connect(db) as conn:
            conn.execute("ALTER TABLE registered_model_aliases_away RENAME TO registered_model_aliases")


def test_unreadable_champion_stops_the_run_and_leaves_the_champion(store: Store) -> None:
    client = store.client()
    champion = str(client.get_model_version_by_alias(NAME, "champion").version)
    versions = len(client.search_model_versions(f"name='{NAME}'"))
    with aliases_unreadable(store.root / "mlflow.db"):
        with pytest.raises(TrackingError) as raised:
            champion_metrics(store.settings, NAME, store.params_b, store.prepared_b)
        message = str(raised.value)
        assert message.startswith(f"registry: cannot read the champion of {NAME} from MLflow at sqlite:///")
        assert message.endswith("nothing was registered and the champion is unchanged")
        assert "\n" not in message
        with pytest.raises(TrackingError):
            register(store, store.params_b, store.prepared_b, store.challenger_dir)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == champion
    assert len(client.search_model_versions(f"name='{NAME}'")) == versions


def test_unreachable_registry_is_not_taken_for_no_champion(store: Store, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    dead = TrackingSettings(uri=f"http://127.0.0.1:{port}", experiment="bitune", artifact_location=None)
    with pytest.raises(TrackingError, match=r"^registry: cannot read the champion of bitune-classifier"):
        champion_metrics(dead, NAME, store.params_b, store.prepared_b)
