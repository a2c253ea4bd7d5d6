"""What `bitune run` prints when it ends: the store it names must never show a password, and the UI
hint must be one that opens that store."""

from __future__ import annotations

import pytest

from bitune.retrain_summary import RetrainSummary
from flows.cli import print_summary
from flows.cli_errors import console


def printed(tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> str:
    # one line per print, so substrings are not cut by wrapping. `_width`, not `width`: undoing a
    # patched `width` would pin the shared console to the width read before (80), for later tests
    monkeypatch.setattr(console, "_width", 300)
    summary = RetrainSummary(
        data_version="0123abcd.dir",
        tracking_uri=tracking_uri,
        run_id="runid42",
        phases=[{"phase": "head", "val_accuracy": 0.61, "val_macro_f1": 0.6, "cka": 1.0, "seconds": 2.0}],
        test_metrics={"test/accuracy": 0.99, "test/macro_f1": 0.98, "test/cka_to_pretrained": 0.957},
        model_name="bitune-classifier",
        model_version="1",
        promoted=True,
        gate=["no champion yet"],
        champion_version="1",
    )
    with console.capture() as captured:
        print_summary(summary)
    return captured.get()


def test_a_tracking_server_is_named_without_its_password_and_opened_in_a_browser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = printed("http://alice:s3cret@127.0.0.1:5055", monkeypatch)
    assert "s3cret" not in text
    assert "MLflow: http://alice:***@127.0.0.1:5055" in text
    assert "Open the MLflow UI at http://127.0.0.1:5055 in a browser" in text  # the browser asks
    assert "--backend-store-uri" not in text  # `mlflow ui` takes a database, not a server


def test_a_database_store_is_named_without_its_password_and_opened_with_mlflow_ui(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = printed("postgresql://bitune:s3cret@db:5432/mlflow", monkeypatch)
    assert "s3cret" not in text
    assert "mlflow ui --backend-store-uri postgresql://bitune:***@db:5432/mlflow" in text


def test_the_local_store_keeps_its_ui_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    text = printed("sqlite:////p/mlflow.db", monkeypatch)
    assert "MLflow: sqlite:////p/mlflow.db" in text
    assert "bitune ui (or mlflow ui --backend-store-uri sqlite:////p/mlflow.db)" in text
    assert "Model bitune-classifier version 1: alias challenger, promoted to champion" in text
