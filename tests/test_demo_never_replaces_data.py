"""The default source 'demo' never replaces the user's data: real DVC repos, `version_data_fn`.

The demo writes data/ only while there is no data version yet or the current one is itself the demo;
after `--data reviews.csv`, a plain run versions nothing new and retrains on reviews.csv's version.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from conftest import REPO, make_project
from project_state import data_state

from bitune.data.demo import DEMO_FILE, DEMO_MARKER, demo_files, holds_demo, make_demo_frame
from bitune.data.versioning import dir_md5
from bitune.errors import DataError
from bitune.params import DataParams, load_params
from tasks import dvc_store
from tasks.data import version_data_fn
from tasks.runs import params_as_run

pytestmark = pytest.mark.slow

DEMO = DataParams(demo_rows=60)  # the default source, 'demo', at a size that validates quickly


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return make_project(tmp_path / "project", Path())


def test_first_demo_is_versioned_with_its_marker_and_the_md5_dvc_records(project: Path) -> None:
    version = version_data_fn(DEMO, project)
    assert sorted(p.name for p in (project / "data").iterdir()) == [DEMO_MARKER, DEMO_FILE]
    assert holds_demo(project / "data")
    # dir_md5 is how a run recognises the demo without data/ (a fresh clone): it must agree with DVC
    assert version.md5 == dir_md5(demo_files(60, 0)) == dvc_store.data_version(project)


def test_plain_run_after_real_data_keeps_that_version(project: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    version_data_fn(DEMO, project)
    reviews = project.parent / "reviews.csv"
    make_demo_frame(80, 9).to_csv(reviews, index=False)  # demo-like labels: the audit's worst case
    real = version_data_fn(DataParams(source=str(reviews)), project)
    before = data_state(project)
    with caplog.at_level(logging.WARNING, logger="bitune"):
        again = version_data_fn(DEMO, project)  # `bitune run` with the default params
        forced_demo_size = version_data_fn(DataParams(demo_rows=90), project)
    assert again.md5 == forced_demo_size.md5 == real.md5 and not again.changed
    assert data_state(project) == before  # data.dvc, data/, cache and remote exactly as they were
    assert (project / "data" / "reviews.csv").read_bytes() == reviews.read_bytes()
    assert "is not the demo: using that version" in caplog.text and real.md5 in caplog.text


def test_plain_run_after_data_with_other_column_names_reads_that_version(project: Path) -> None:
    """`bitune run --data reviews.csv --set data.text_column=review --set data.label_column=stars`, then
    a plain `bitune run` (and a scheduled one): data/ stores the columns as text and label, so the
    default column params read it."""
    version_data_fn(DEMO, project)
    reviews = project.parent / "reviews.csv"
    frame = make_demo_frame(80, 9)
    frame.rename(columns={"text": "review", "label": "stars"}).to_csv(reviews, index=False)
    columns = {"text_column": "review", "label_column": "stars"}
    real = version_data_fn(DataParams(source=str(reviews), **columns), project)
    assert real.changed and real.stats["rows"] == 80
    before = data_state(project)
    again = version_data_fn(DEMO, project)  # `bitune run` with the default params
    same_params = version_data_fn(DataParams(source="data", **columns), project)
    assert again.md5 == same_params.md5 == real.md5 and not again.changed and not same_params.changed
    assert again.stats["rows"] == same_params.stats["rows"] == 80
    assert data_state(project) == before
    assert (project / "data" / "reviews.csv").read_bytes() == frame.to_csv(index=False).encode()
    # what each run logs as its data params: the source it read, with that source's columns
    params = load_params(REPO / "params" / "default.yaml")
    logged = params_as_run(params.model_copy(update={"data": DEMO}), again).data
    assert (logged.source, logged.text_column, logged.label_column) == ("data", "text", "label")
    with_columns = params.model_copy(update={"data": DataParams(source=str(reviews), **columns)})
    assert params_as_run(with_columns, real) is with_columns  # as given: it read reviews.csv by those


def test_a_demo_version_is_regenerated_when_the_demo_params_change(project: Path) -> None:
    first = version_data_fn(DEMO, project)
    bigger = version_data_fn(DataParams(demo_rows=80), project)
    assert bigger.changed and bigger.md5 != first.md5 and bigger.md5 == dir_md5(demo_files(80, 0))


def test_an_edited_demo_is_the_users_data(project: Path) -> None:
    """A plain run neither regenerates nor silently versions hand edits; data.source=data versions them."""
    demo = version_data_fn(DEMO, project)
    edited = project / "data" / DEMO_FILE
    edited.write_bytes(edited.read_bytes() + b"A row the user added by hand.,positive\n")
    before = data_state(project)
    with pytest.raises(DataError, match=rf"but data.dvc records {demo.md5}.*--set data.source=data"):
        version_data_fn(DEMO, project)
    assert data_state(project) == before
    version = version_data_fn(DataParams(source="data", demo_rows=60), project)
    assert version.changed and b"by hand" in edited.read_bytes()  # versioned as is, not regenerated
    assert version_data_fn(DEMO, project).md5 == version.md5  # and plain runs reuse it


def test_real_version_without_data_dir_is_refused_and_left_alone(project: Path) -> None:
    reviews = project.parent / "reviews.csv"
    make_demo_frame(80, 9).to_csv(reviews, index=False)
    real = version_data_fn(DataParams(source=str(reviews)), project)
    shutil.rmtree(project / "data")  # a fresh clone of a project whose data.dvc names real data
    dvc_file = (project / "data.dvc").read_bytes()
    fix = f"`bitune data checkout {real.md5[:8]}`"
    with pytest.raises(DataError, match=rf"records data version {real.md5}, not the demo.*{fix}"):
        version_data_fn(DEMO, project)
    assert (project / "data.dvc").read_bytes() == dvc_file and not (project / "data").exists()


@pytest.mark.parametrize(
    ("marker", "checked_out"),
    [(True, False), (False, False), (False, True)],
    ids=["fresh-clone", "fresh-clone-of-a-demo-before-markers", "demo-before-markers"],
)
def test_a_demo_version_from_before_or_elsewhere_gets_the_demo(
    project: Path, marker: bool, checked_out: bool
) -> None:
    """data.dvc names the demo these params write (as the repo ships it); data/ unpulled or unmarked."""
    files = demo_files(60, 0) if marker else {DEMO_FILE: demo_files(60, 0)[DEMO_FILE]}
    (project / "data.dvc").write_text(f"outs:\n- md5: {dir_md5(files)}\n  hash: md5\n  path: data\n")
    if checked_out:
        (project / "data").mkdir()
        (project / "data" / DEMO_FILE).write_bytes(files[DEMO_FILE])
    version = version_data_fn(DEMO, project)
    assert holds_demo(project / "data") and version.md5 == dir_md5(demo_files(60, 0))
