"""validate_frames: every problem collected, one-line messages that name the split, row and fix."""

import json
from pathlib import Path

import pandas as pd
import pytest

from bitune.data.demo import make_demo_frame
from bitune.data.sources import read_source
from bitune.data.validation import ValidationReport, drop_label_conflicts, validate_frames
from bitune.errors import DataError
from bitune.params import DataParams, SplitParams


def frame(texts: list, labels: list) -> pd.DataFrame:
    return pd.DataFrame({"text": texts, "label": labels})


def clean(rows: int = 60, seed: int = 0) -> pd.DataFrame:
    return make_demo_frame(rows, seed)


def only_error(frames: dict[str, pd.DataFrame], **kw: object) -> str:
    """The single error validation finds; asserts it raises as a one-line DataError too."""
    report = validate_frames(frames, DataParams(**kw))
    assert len(report.errors) == 1, report.errors
    with pytest.raises(DataError) as caught:
        report.raise_for_errors()
    assert str(caught.value) == report.errors[0] and "\n" not in str(caught.value)
    return report.errors[0]


def with_rows(base: pd.DataFrame, at: dict[int, tuple]) -> pd.DataFrame:
    """base with rows replaced at 0-based positions: file row = position + 2."""
    out = base.copy()
    for i, (text, label) in at.items():
        out.loc[i, ["text", "label"]] = [text, label]
    return out


def test_clean_data_passes_with_stats() -> None:
    report = validate_frames({"all": clean(100)}, DataParams())
    assert report.ok and report.errors == [] and report.warnings == []
    report.raise_for_errors()
    assert report.stats["rows"] == report.stats["rows_all"] == 100
    assert report.stats["classes"] == 2 and report.stats["duplicates"] == 0
    assert 0 < report.stats["chars_mean"] <= report.stats["chars_p95"]


def test_row_numbers_are_file_rows(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    lines = clean(60).to_csv(index=False).splitlines()
    lines[7] = ",positive"  # file row 8 (1-based, header is row 1) has no text
    path.write_text("\n".join(lines) + "\n")
    raw = read_source(DataParams(source=str(path)), tmp_path / "data")
    message = only_error(raw.frames)
    assert "missing or blank text at row 8;" in message
    assert path.read_text().splitlines()[8 - 1] == ",positive"


def test_blank_and_null_texts_name_split_and_first_five_rows() -> None:
    bad = with_rows(
        clean(),
        {
            i: (t, "positive")
            for i, t in zip([0, 2, 3, 5, 8, 9], ["", "  ", None, "\t", "", " "], strict=True)
        },
    )
    message = only_error({"all": bad})
    assert message.startswith("missing or blank text at rows 2, 4, 5, 7, 10 (+1 more)")


def test_empty_frame_names_the_split() -> None:
    report = validate_frames(
        {"train": clean(), "validation": frame([], []), "test": clean(60, 1)}, DataParams()
    )
    assert "validation: no data rows" in report.errors[0]


def test_labels_outside_data_labels_name_label_and_rows() -> None:
    bad = with_rows(clean(), {3: ("meh, fine", "neutral"), 6: ("so so", "neutral")})
    message = only_error({"all": bad}, labels=["negative", "positive"])
    assert "labels not in data.labels ['negative', 'positive']: 'neutral' (rows 5, 8)" in message


def test_missing_label() -> None:
    message = only_error({"all": with_rows(clean(), {1: ("unlabelled text", None)})})
    assert message.startswith("missing or blank label at row 3")


def test_single_class_names_it() -> None:
    message = only_error({"all": clean(80)[lambda f: f["label"] == "positive"]})
    assert "only one class ('positive')" in message and "data.label_column" in message


def test_too_few_rows_per_class_names_the_class_and_minimum() -> None:
    small = pd.concat(
        [clean(60), frame([f"neutral {i}" for i in range(5)], ["neutral"] * 5)], ignore_index=True
    )
    message = only_error({"all": small})
    assert "'neutral' has 5 rows" in message and "at least 20 per class" in message


def test_carving_test_out_of_train_needs_enough_rows_per_class() -> None:
    train, validation = clean(60), clean(60, 1)
    assert validate_frames({"train": train, "validation": validation}, DataParams()).ok
    message = only_error({"train": train.head(12), "validation": validation})
    assert message.startswith("train: too few rows per class") and "needs at least 20" in message


def test_duplicates_above_the_limit_are_an_error_below_a_warning() -> None:
    base = clean(100)
    dup = pd.concat([base, base.iloc[[4]]], ignore_index=True)  # row 102 repeats row 6
    message = only_error({"all": dup}, max_duplicate_fraction=0.0)
    assert message.startswith("1 duplicate row (1.0% of 101), e.g. row 102 repeats row 6")
    report = validate_frames({"all": dup}, DataParams(max_duplicate_fraction=0.05))
    assert report.ok and "within data.max_duplicate_fraction=0.05, kept" in report.warnings[0]
    assert report.stats["duplicates"] == 1


def test_same_text_with_two_labels_names_both_rows() -> None:
    base = clean()
    bad = with_rows(
        base, {9: (base.loc[2, "text"], "positive" if base.loc[2, "label"] == "negative" else "negative")}
    )
    message = only_error({"all": bad})
    assert message.startswith("1 text has more than one label") and "at row 4 and" in message
    assert "at row 11" in message
    assert message.endswith("fix the labels, or set data.label_conflicts: drop to drop those texts' rows")


def conflicts() -> dict[str, pd.DataFrame]:
    """Two texts with two labels ('a' across splits, 'b' three times), a repeated clean text, two clean."""
    train = frame(["a", "b", "keep", "b", "keep", "b", "other"], ["x", "x", "y", "y", "y", "x", "y"])
    validation = frame(["a", "fine", "b"], ["y", "x", None])  # 'b' unlabelled: not a conflict, still 'b'
    return {"train": train, "validation": validation}


def test_label_conflicts_drop_is_a_warning_that_counts_texts_and_rows() -> None:
    report = validate_frames(conflicts(), DataParams(label_conflicts="drop", max_duplicate_fraction=1))
    assert not any("more than one label" in e for e in report.errors), report.errors
    (warning,) = [w for w in report.warnings if "more than one label" in w]
    assert warning.startswith("2 texts have more than one label, e.g. 'a' is 'x' at train row 2 and ")
    assert warning.endswith("; their 6 rows are dropped before splitting (data.label_conflicts: drop)")


def test_drop_label_conflicts_drops_every_row_of_those_texts_in_every_split() -> None:
    frames = conflicts()
    kept, warning = drop_label_conflicts(frames)
    assert kept["train"].to_dict("list") == {"text": ["keep", "keep", "other"], "label": ["y", "y", "y"]}
    assert kept["validation"].to_dict("list") == {"text": ["fine"], "label": ["x"]}
    assert warning == (
        "dropped 6 rows of 2 texts with more than one label, e.g. 'a' (data.label_conflicts: drop)"
    )
    assert len(frames["train"]) == 7 and len(frames["validation"]) == 3  # the inputs are not changed
    clean_frames = {"all": clean()}
    assert drop_label_conflicts(clean_frames) == (clean_frames, None)


def test_leakage_between_train_and_test_names_both_rows() -> None:
    train, validation, test = clean(60), clean(60, 1), clean(60, 2)
    test = with_rows(test, {0: tuple(train.loc[5])})
    message = only_error({"train": train, "validation": validation, "test": test})
    assert (
        message.startswith("1 test text also in train (leakage)") and "train row 7 and test row 2" in message
    )


def test_leakage_into_validation_is_a_warning() -> None:
    train, validation, test = clean(60), clean(60, 1), clean(60, 2)
    report = validate_frames(
        {"train": train, "validation": with_rows(validation, {0: tuple(train.loc[0])}), "test": test},
        DataParams(),
    )
    assert report.ok and "validation text also in train" in report.warnings[0]


def test_texts_over_max_length_chars() -> None:
    bad = with_rows(clean(), {0: ("x" * 600, "positive")})
    message = only_error({"all": bad}, max_length_chars=500)
    assert message.startswith("text longer than data.max_length_chars=500 at row 2 (longest 600 chars)")


def test_long_texts_and_class_imbalance_are_warnings() -> None:
    many = clean(2000)
    skewed = pd.concat([many[many["label"] == "positive"], many[many["label"] == "negative"].head(40)])
    skewed = with_rows(skewed.reset_index(drop=True), {0: ("long " * 500, "positive")})
    report = validate_frames({"all": skewed}, DataParams())
    assert report.ok
    assert any(w.startswith("class imbalance 25:1") for w in report.warnings)
    assert any(w.startswith("1 text longer than 2000 chars") for w in report.warnings)


def test_class_only_in_test_is_an_error() -> None:
    test = with_rows(clean(60, 2), {0: ("a neutral remark", "neutral")})
    message = only_error({"train": clean(60), "validation": clean(60, 1), "test": test})
    assert message.startswith("test: class 'neutral' is not in train")


def test_every_problem_is_collected_into_one_line() -> None:
    base = clean()
    bad = with_rows(base, {0: ("", "positive"), 1: ("ok", "neutral"), 2: ("y" * 50, "negative")})
    report = validate_frames({"all": bad}, DataParams(labels=["negative", "positive"], max_length_chars=40))
    assert len(report.errors) >= 3
    with pytest.raises(DataError) as caught:
        report.raise_for_errors()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(report.errors[0] + f" (+{len(report.errors) - 1} more problems: ")
    assert all(e in message for e in report.errors)
    assert caught.value.problems == report.errors  # type: ignore[attr-defined]


def test_empty_report_does_not_raise_and_missing_columns_are_reported() -> None:
    ValidationReport().raise_for_errors()
    report = validate_frames({"all": pd.DataFrame({"review": ["a"], "label": ["x"]})}, DataParams())
    assert report.errors == ["frame has no column text (columns: review, label); read data with read_source"]
    assert validate_frames({}, DataParams()).errors


def test_uses_the_split_params_for_the_per_class_minimum() -> None:
    data = clean(30)  # 15 per class: too few for 10% parts, enough for 15%
    assert not validate_frames({"all": data}, DataParams()).ok
    assert validate_frames({"all": data}, DataParams(split=SplitParams(validation=0.15, test=0.15))).ok


# --- a row goes by the line of the file the user opens --------------------------------------------


def jsonl(path: Path, records: list[dict], blank_before: tuple[int, ...] = ()) -> Path:
    """records as JSONL, a record a line, with a blank line before each 0-based record in blank_before."""
    lines = [("\n" if i in blank_before else "") + json.dumps(r) for i, r in enumerate(records)]
    path.write_text("\n".join(lines) + "\n\n")  # a trailing blank line too, as editors leave
    return path


def records(at: dict[int, tuple] | None = None, rows: int = 60) -> list[dict]:
    """clean(rows) as records, those at 0-based positions replaced by (text, label)."""
    out = clean(rows).to_dict("records")
    for i, (text, label) in (at or {}).items():
        out[i] = {"text": text, "label": label}
    return out


def line(path: Path, number: int) -> dict:
    """The JSON object on 1-based line `number` of path."""
    return json.loads(path.read_text().splitlines()[number - 1])


def read_error(source: Path, tmp_path: Path, **kw: object) -> str:
    return only_error(read_source(DataParams(source=str(source), **kw), tmp_path / "data").frames, **kw)


def test_jsonl_blank_text_is_named_by_its_line_as_the_json_errors_are(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "r.jsonl", records({9: ("  ", "positive")}))
    assert read_error(path, tmp_path).startswith("missing or blank text at row 10;")
    assert line(path, 10)["text"] == "  "
    path.write_text(path.read_text().replace('"text": "  "', '"text": "  ', 1))
    with pytest.raises(DataError, match=r"^r\.jsonl line 10: not valid JSON"):  # the same line, same number
        read_source(DataParams(source=str(path)), tmp_path / "data")


def test_jsonl_rows_after_a_blank_line_keep_their_line(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "r.jsonl", records({9: ("", "positive")}), blank_before=(3,))
    assert read_error(path, tmp_path).startswith("missing or blank text at row 11;")
    assert line(path, 11)["text"] == ""


def jsonl_case(kind: str) -> tuple[list[dict], dict[str, object], str, list[int]]:
    """(records, params, the message's exact part, the 1-based lines it names) for each row message."""
    base = records()
    other = {"positive": "negative", "negative": "positive"}
    if kind == "too-long":
        return records({0: ("x" * 600, "positive")}), {"max_length_chars": 500}, "at row 1 (longest 600", [1]
    if kind == "blank-label":
        return records({6: ("an unlabelled text", None)}), {}, "missing or blank label at row 7;", [7]
    if kind == "outside-labels":
        bad = records({3: ("meh", "neutral"), 7: ("so so", "neutral")})
        return bad, {"labels": ["negative", "positive"]}, "'neutral' (rows 4, 8)", [4, 8]
    if kind == "spelling":
        spaced = records({4: ("a spaced label", " positive")})
        first = next(i for i, r in enumerate(spaced) if r["label"] == "positive") + 1
        return spaced, {}, f"label ' positive' at row 5 and 'positive' at row {first} differ", [5, first]
    if kind == "duplicate":
        return base + [base[4]], {"max_duplicate_fraction": 0.0}, "e.g. row 61 repeats row 5", [61, 5]
    assert kind == "conflict"
    flipped = records({10: (base[2]["text"], other[base[2]["label"]])})
    return flipped, {}, f"is {base[2]['label']!r} at row 3 and {flipped[10]['label']!r} at row 11", [3, 11]


@pytest.mark.parametrize(
    "kind", ["too-long", "blank-label", "outside-labels", "spelling", "duplicate", "conflict"]
)
def test_every_row_message_names_jsonl_lines(tmp_path: Path, kind: str) -> None:
    rows, kw, named, lines = jsonl_case(kind)
    path = jsonl(tmp_path / "r.jsonl", rows)
    frames = read_source(DataParams(source=str(path), **kw), tmp_path / "data").frames
    report = validate_frames(frames, DataParams(**kw))  # a lone ' positive' is a small class too
    assert any(named in error for error in report.errors), report.errors
    assert [line(path, n) for n in lines] == [rows[n - 1] for n in lines]


def test_jsonl_leakage_names_train_and_test_lines(tmp_path: Path) -> None:
    folder = tmp_path / "splits"
    folder.mkdir()
    train = records()
    jsonl(folder / "train.jsonl", train)
    jsonl(folder / "validation.jsonl", clean(60, 1).to_dict("records"))
    jsonl(folder / "test.jsonl", [train[5]] + clean(60, 2).to_dict("records")[1:])
    assert "at train row 6 and test row 1;" in read_error(folder, tmp_path)


def test_csv_rows_after_a_blank_line_or_a_quoted_line_break_keep_their_line(tmp_path: Path) -> None:
    lines = clean(60).to_csv(index=False).splitlines()
    lines[3] = '"a review\nover two lines",positive'  # one row, lines 4 and 5 of the file
    lines[9] = ",negative"
    path = tmp_path / "r.csv"
    path.write_text("\n".join(lines[:6] + [""] + lines[6:]) + "\n")  # a blank line 8 too
    assert read_error(path, tmp_path).startswith("missing or blank text at row 12;")
    assert path.read_text().splitlines()[12 - 1] == ",negative"


def test_tsv_rows_are_named_by_their_line(tmp_path: Path) -> None:
    frame_ = with_rows(clean(60), {4: ("", "positive")})
    path = tmp_path / "r.tsv"
    path.write_text(frame_.to_csv(sep="\t", index=False))
    assert read_error(path, tmp_path).startswith("missing or blank text at row 6;")
    assert path.read_text().splitlines()[6 - 1] == "\tpositive"


def test_parquet_rows_have_no_lines_and_count_from_one(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    with_rows(clean(60), {4: ("", "positive")}).to_parquet(path)
    assert read_error(path, tmp_path).startswith("missing or blank text at row 5;")
    assert pd.read_parquet(path).loc[5 - 1, "text"] == ""


def test_frames_replaced_after_reading_are_numbered_as_a_headed_csv(tmp_path: Path) -> None:
    path = jsonl(tmp_path / "r.jsonl", records({9: ("", "positive")}), blank_before=(3,))
    frames = read_source(DataParams(source=str(path)), tmp_path / "data").frames
    frames["all"] = frames["all"].copy()  # the line numbers were read with the other frame
    assert only_error(frames).startswith("missing or blank text at row 11;")  # place + 2, as before
