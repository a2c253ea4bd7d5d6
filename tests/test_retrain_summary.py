"""The run summary a scheduled run leaves in the Prefect UI: scores, gate, where to look, no secrets."""

from __future__ import annotations

from bitune.retrain_summary import RetrainSummary


def finished(**changes: object) -> RetrainSummary:
    summary = RetrainSummary(
        data_version="0123abcd.dir",
        tracking_uri="http://admin:s3cret@mlflow:5000",
        run_id="runid42",
        phases=[
            {"phase": "head", "val_accuracy": 0.61, "val_macro_f1": 0.6, "cka": 1.0, "seconds": 2.0},
            {"phase": "bottom", "val_accuracy": 1.0, "val_macro_f1": 1.0, "cka": 0.957, "seconds": 30.25},
        ],
        test_metrics={"test/accuracy": 0.99, "test/macro_f1": 0.98, "test/cka_to_pretrained": 0.957},
        model_name="bitune-classifier",
        model_version="3",
        promoted=True,
        gate=["test/macro_f1 0.9800 beats champion's 0.9700"],
        champion_version="3",
    )
    for key, value in changes.items():
        setattr(summary, key, value)
    return summary


def test_the_markdown_has_every_phase_the_test_row_and_the_gate() -> None:
    text = finished().markdown()
    assert "[bitune-classifier version 3](http://mlflow:5000/#/models/bitune-classifier/versions/3), " in text
    assert ", **promoted to champion**" in text
    assert "| head | 0.6100 | 0.6000 | 1.0000 | 2.0 |" in text
    assert "| bottom | 1.0000 | 1.0000 | 0.9570 | 30.2 |" in text
    assert "| **test** | 0.9900 | 0.9800 | 0.9570 | |" in text
    assert "Gate (champion: version 3 after this run): test/macro_f1 0.9800 beats champion's 0.9700" in text
    assert "MLflow run `runid42` · data version `0123abcd.dir`" in text


def test_the_markdown_never_shows_a_password_and_marks_missing_scores() -> None:
    text = finished(promoted=False, test_metrics={"test/accuracy": float("nan")}).markdown()
    assert "s3cret" not in text and "http://admin:***@mlflow:5000" in text
    assert "/versions/3), not promoted" in text
    assert "| **test** | – | – | – | |" in text


def test_a_skipped_run_says_why() -> None:
    text = finished(skipped=True, reason="data version and params unchanged since run r1").markdown()
    assert text.startswith("## bitune retrain: nothing to do")
    assert "unchanged since run r1" in text and "s3cret" not in text


def test_a_tracking_server_links_the_run_and_the_version_without_the_password() -> None:
    text = finished(tracking_uri="https://admin:s3cret@mlflow.example:5000/", experiment_id="7").markdown()
    assert "s3cret" not in text and "admin" not in text.split("MLflow `")[0]  # links carry no user at all
    run_page = "https://mlflow.example:5000/#/experiments/7/runs/runid42"
    assert f"[MLflow run `runid42`]({run_page})" in text
    version_page = "https://mlflow.example:5000/#/models/bitune-classifier/versions/3"
    assert text.startswith(f"## bitune retrain: [bitune-classifier version 3]({version_page}), **promoted")
    assert "bitune ui" not in text  # a server has its own UI


def test_a_server_under_a_path_keeps_it_and_a_slash_in_the_name_is_quoted() -> None:
    server = "http://mlflow.internal/tracking"
    summary = finished(tracking_uri=server, experiment_id="7", model_name="my/model")
    assert summary.run_link() == "http://mlflow.internal/tracking/#/experiments/7/runs/runid42"
    assert summary.model_version_link() == "http://mlflow.internal/tracking/#/models/my%2Fmodel/versions/3"


def test_a_local_store_has_no_link_and_says_how_to_open_it() -> None:
    for uri in ("sqlite:////p/mlflow.db", "file:///p/mlruns", "postgresql://bitune:s3cret@db/mlflow"):
        summary = finished(tracking_uri=uri, experiment_id="7")
        text = summary.markdown()
        assert summary.run_link() is None and summary.model_version_link() is None
        assert "](" not in text and "#/experiments" not in text and "s3cret" not in text
        assert "MLflow run `runid42` · data version `0123abcd.dir`" in text
        assert "(open it with `bitune ui` in the project folder)" in text
        skipped = finished(tracking_uri=uri, skipped=True, reason="unchanged").markdown()
        assert "bitune ui" in skipped and "](" not in skipped


def test_without_the_experiment_the_run_is_named_but_not_linked() -> None:
    text = finished().markdown()  # a server, but the experiment id could not be read
    assert "MLflow run `runid42` · data version" in text and "#/experiments" not in text
    assert "(http://mlflow:5000/#/models/bitune-classifier/versions/3)" in text
