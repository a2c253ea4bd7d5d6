"""One label written two ways (' 1' and '1', '1.0' and '1') is refused, not silently two classes.

Refused rather than merged: labels become the model's class names and the data version keeps the
file as the user wrote it, so the user picks the spelling. Real files through `read_source`, and a
real DVC project for the data step.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_project
from project_state import data_state

from bitune.data.demo import make_demo_frame
from bitune.data.validation import DataValidationError, label_key
from bitune.data.versioning import check_new_source
from bitune.errors import DataError
from bitune.params import DataParams
from tasks.data import version_data_fn


def digits(rows: int = 80, seed: int = 1) -> pd.DataFrame:
    """The demo's texts labelled '0' / '1', as a spreadsheet export might."""
    frame = make_demo_frame(rows, seed)
    return frame.assign(label=frame["label"].map({"negative": "0", "positive": "1"}))


def error_for(tmp_path: Path, frame: pd.DataFrame, name: str = "reviews.csv", **params: object) -> str:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    with pytest.raises(DataValidationError) as caught:
        check_new_source(DataParams(source=str(path), **params), tmp_path)  # type: ignore[arg-type]
    return str(caught.value)


@pytest.mark.parametrize("other", [" 1", "1 ", "1.0", "1.00", " 1.0"])
def test_a_label_written_another_way_is_refused_naming_file_row_and_both(tmp_path: Path, other: str) -> None:
    frame = digits()
    first = int(frame.index[frame["label"] == "1"][0])
    later = int(frame.index[frame["label"] == "1"][3])
    frame.loc[later, "label"] = other
    message = error_for(tmp_path, frame)
    assert "\n" not in message
    assert message.startswith(
        f"reviews.csv: label {other!r} at row {later + 2} and '1' at row {first + 2} differ only by spaces "
        "or a trailing '.0', so they would be two classes"
    ), message
    assert "write every '1' label the same way" in message


def test_several_labels_written_two_ways_are_counted(tmp_path: Path) -> None:
    frame = digits()
    frame.loc[frame.index[frame["label"] == "1"][2], "label"] = "1.0"
    frame.loc[frame.index[frame["label"] == "0"][2], "label"] = " 0"
    assert "(+1 more labels like it)" in error_for(tmp_path, frame)


def test_in_split_files_the_split_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "splits"
    folder.mkdir()
    digits(80, 1).to_csv(folder / "train.csv", index=False)
    test = digits(40, 2)
    test.loc[test.index[test["label"] == "0"][0], "label"] = "0.0"
    test.to_csv(folder / "test.csv", index=False)
    with pytest.raises(
        DataValidationError, match=r"^splits/: label '0\.0' at test row \d+ and '0' at test row \d+ differ"
    ):
        check_new_source(DataParams(source=str(folder)), tmp_path)


@pytest.mark.parametrize(("one", "other"), [("1", "10"), ("1", "1.5"), ("1", "01"), ("pos", "Pos")])
def test_labels_that_only_look_alike_are_kept_apart(one: str, other: str, tmp_path: Path) -> None:
    assert label_key(one) != label_key(other)
    frame = digits().replace({"label": {"0": other, "1": one}})
    path = tmp_path / "reviews.csv"
    frame.to_csv(path, index=False)
    check_new_source(DataParams(source=str(path)), tmp_path)  # two classes, as written


def test_numbers_a_format_types_as_floats_are_one_label(tmp_path: Path) -> None:
    """JSONL `1.0` and `1` are the same number, read as '1' already: nothing to refuse."""
    frame = digits()
    lines = [
        json.dumps({"text": t, "label": float(v) if i % 2 else int(v)})
        for i, (t, v) in enumerate(zip(frame["text"], frame["label"], strict=True))
    ]
    path = tmp_path / "reviews.jsonl"
    path.write_text("\n".join(lines) + "\n")
    check_new_source(DataParams(source=str(path)), tmp_path)


def test_with_data_labels_set_the_other_spelling_is_an_unknown_label(tmp_path: Path) -> None:
    frame = digits()
    frame.loc[frame.index[frame["label"] == "1"][0], "label"] = "1.0"
    message = error_for(tmp_path, frame, labels=["0", "1"])
    assert "labels not in data.labels ['0', '1']: '1.0'" in message and "trailing '.0'" not in message


@pytest.mark.slow
def test_the_data_step_refuses_it_and_changes_nothing(tmp_path: Path) -> None:
    project = make_project(tmp_path / "project", Path())
    version_data_fn(DataParams(demo_rows=60), project)
    frame = digits()
    frame.loc[frame.index[frame["label"] == "1"][1], "label"] = " 1"
    frame.to_csv(tmp_path / "reviews.csv", index=False)
    before = data_state(project)
    with pytest.raises(DataError, match=r"^reviews\.csv: label ' 1' at row \d+ and '1' at row \d+ differ"):
        version_data_fn(DataParams(source=str(tmp_path / "reviews.csv")), project)
    assert data_state(project) == before
