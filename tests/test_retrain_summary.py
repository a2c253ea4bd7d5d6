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
    assert "bitune-classifier version 3, **promoted to champion**" in text
    assert "| head | 0.6100 | 0.6000 | 1.0000 | 2.0 |" in text
    assert "| bottom | 1.0000 | 1.0000 | 0.9570 | 30.2 |" in text
    assert "| **test** | 0.9900 | 0.9800 | 0.9570 | |" in text
    assert "Gate (champion: version 3 after this run): test/macro_f1 0.9800 beats champion's 0.9700" in text
    assert "MLflow run `runid42` · data version `0123abcd.dir`" in text


def test_the_markdown_never_shows_a_password_and_marks_missing_scores() -> None:
    text = finished(promoted=False, test_metrics={"test/accuracy": float("nan")}).markdown()
    assert "s3cret" not in text and "http://admin:***@mlflow:5000" in text
    assert "version 3, not promoted" in text
    assert "| **test** | – | – | – | |" in text


def test_a_skipped_run_says_why() -> None:
    text = finished(skipped=True, reason="data version and params unchanged since run r1").markdown()
    assert text.startswith("## bitune retrain: nothing to do")
    assert "unchanged since run r1" in text and "s3cret" not in text
