"""Which data/ columns a run reads, and why the pipeline key uses them instead of the source's names."""

from __future__ import annotations

from pathlib import Path

from bitune.data.sources import STORED_COLUMNS, columns_in_store
from bitune.params import load_params
from bitune.pipeline import pipeline_key
from tasks.data import version_data_fn

REPO = Path(__file__).resolve().parents[1]


def write_tsv(path: Path, header: str, n: int = 40) -> Path:
    rows = [f"text number {i} is {'fine' if i % 2 else 'poor'}\t{i % 2}" for i in range(n)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_versioned_source_is_read_by_text_and_label(tmp_path: Path) -> None:
    source = write_tsv(tmp_path / "reviews.tsv", "sentence\tlabel")
    params = load_params(
        REPO / "params" / "default.yaml",
        [f"data.source={source}", "data.text_column=sentence", f"data.remote={tmp_path / 'remote'}"],
    )
    root = tmp_path / "project"
    root.mkdir()
    version = version_data_fn(params.data, root)
    assert version.columns == STORED_COLUMNS  # data/ stores them as text and label
    plain = load_params(REPO / "params" / "default.yaml", [])
    assert pipeline_key(version.md5, params, version.columns) == pipeline_key(
        version.md5, plain, columns_in_store(plain.data, root / "data")
    )


def test_user_managed_data_dir_keeps_its_own_columns(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    write_tsv(tmp_path / "data" / "all.tsv", "review\tstars")
    mine = load_params(
        REPO / "params" / "default.yaml",
        ["data.source=data", "data.text_column=review", "data.label_column=stars"],
    ).data
    assert columns_in_store(mine, tmp_path / "data") == ("review", "stars")
    other = mine.model_copy(update={"text_column": "missing"})
    assert columns_in_store(other, tmp_path / "data") == STORED_COLUMNS


def test_key_differs_when_another_column_of_data_is_read() -> None:
    params = load_params(REPO / "params" / "default.yaml", [])
    md5 = "0" * 32 + ".dir"
    assert pipeline_key(md5, params, ("review", "stars")) != pipeline_key(md5, params, STORED_COLUMNS)
    assert pipeline_key(md5, params, STORED_COLUMNS) == pipeline_key(md5, params)


def test_noop_reason_is_in_the_run_log(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """A scheduled run has no console: the run that makes it a no-op is named in its log."""
    import logging

    from tasks import tracking
    from tasks.runs import previous_success_fn
    from tasks.tracking import TrackingSettings

    settings = TrackingSettings(f"sqlite:///{tmp_path / 'mlflow.db'}", "bitune", None)
    key = "abc-123"
    run_id = tracking.start_run(settings, "done", {"bitune.pipeline_key": key, "bitune.model_version": "1"})
    tracking.end_run(settings, run_id)
    with caplog.at_level(logging.INFO, logger="bitune"):
        assert previous_success_fn(settings, "other-key") is None
        assert "already trained" not in caplog.text
        assert previous_success_fn(settings, key) == run_id
    assert f"run {run_id} already trained this data version with these params" in caplog.text
