"""A second run on unchanged data and params trains nothing, registers nothing, and says why.

The first run also has Prefect's `log_prints` on: that is when `datasets` fingerprinting the tokenize
function (through dill, which disassembles it) used to fill the run log with bytecode.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from conftest import make_project, tiny_overrides
from mlflow.tracking import MlflowClient

from bitune.errors import ParamsError

pytestmark = pytest.mark.slow


def tracked(root: Path) -> dict[str, object]:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("bitune")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    return {
        "parents": sorted(r.info.run_id for r in runs if "mlflow.parentRunId" not in r.data.tags),
        "all_runs": len(runs),
        "model_versions": sorted(
            int(v.version) for v in client.search_model_versions("name = 'bitune-classifier'")
        ),
        "champion": client.get_model_version_by_alias("bitune-classifier", "champion").version,
    }


class Collect(logging.Handler):
    """Keeps every record it sees; on Prefect's run loggers it sees prints too (log_prints)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_unchanged_rerun_is_a_noop(tmp_path: Path, tiny_bert_dir: Path, prefect_db) -> None:  # type: ignore[no-untyped-def]
    from flows.retrain import retrain

    root = make_project(tmp_path / "project", tiny_bert_dir)
    overrides = tiny_overrides(tiny_bert_dir)
    task_log = Collect()
    logger = logging.getLogger("prefect.task_runs")  # attached here: whether it propagates is Prefect's call
    logger.addHandler(task_log)
    try:
        first = retrain.with_options(log_prints=True)(overrides=overrides, project_dir=str(root))
    finally:
        logger.removeHandler(task_log)
    assert not first.skipped and first.model_version == "1"
    assert "Finished in state Completed()" in task_log.messages
    text = "\n".join(task_log.messages)
    for opcode in ("LOAD_FAST", "LOAD_GLOBAL", "RETURN_VALUE"):  # no dill disassembly of `encode`
        assert opcode not in text
    before = tracked(root)
    dvc_file = (root / "data.dvc").read_bytes()
    run_dirs = sorted(p.name for p in (root / ".bitune" / "runs").iterdir())

    started = time.monotonic()
    again = retrain(overrides=overrides, project_dir=str(root))
    seconds = time.monotonic() - started

    assert again.skipped and again.run_id == first.run_id and str(first.run_id) in again.reason
    assert again.data_version == first.data_version and "--force" in again.reason
    assert again.phases == [] and again.model_version is None
    assert tracked(root) == before  # no new parent run, no child run, no model version; champion 1
    assert (root / "data.dvc").read_bytes() == dvc_file
    assert sorted(p.name for p in (root / ".bitune" / "runs").iterdir()) == run_dirs  # nothing trained
    print(f"no-op run inside the test session: {seconds:.1f} s")

    # A typo in the gate's metric is said though nothing would train (it skipped with exit 0), and
    # `--force` with it keeps the finished phases (it reset them, then preprocessing refused the run).
    kept = sorted(str(p.relative_to(root)) for p in (root / ".bitune").rglob("*") if "logs" not in p.parts)
    typo = [*overrides, "registry.metric=test/f1/positve"]
    for force in (False, True):
        with pytest.raises(ParamsError, match=r"^registry.metric: label 'positve' is not in the data"):
            retrain(overrides=typo, project_dir=str(root), force=force)
    assert tracked(root) == before
    now = sorted(str(p.relative_to(root)) for p in (root / ".bitune").rglob("*") if "logs" not in p.parts)
    assert [p for p in kept if p not in now] == []  # nothing of the trained pipeline was deleted


def test_plain_run_after_data_with_source_columns_is_a_noop(  # type: ignore[no-untyped-def]
    tmp_path: Path, tiny_bert_dir: Path, prefect_db
) -> None:
    """`--data f.tsv --set data.text_column=sentence`, then a plain run: data/ holds the same rows under
    `text`, so the plain run finds the first one instead of training the same model again."""
    from flows.retrain import retrain

    root = make_project(tmp_path / "project", tiny_bert_dir)
    source = tmp_path / "reviews.tsv"
    rows = [f"review number {i} was {'good' if i % 2 else 'bad'}\t{i % 2}" for i in range(80)]
    source.write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    overrides = tiny_overrides(tiny_bert_dir)
    first = retrain(
        overrides=[*overrides, f"data.source={source}", "data.text_column=sentence"], project_dir=str(root)
    )
    assert not first.skipped and first.model_version == "1"
    before = tracked(root)

    plain = retrain(overrides=overrides, project_dir=str(root))

    assert plain.skipped and plain.run_id == first.run_id and plain.data_version == first.data_version
    assert tracked(root) == before  # no second training of the same model, no version 2
