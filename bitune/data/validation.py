"""Checks of the data itself, run before anything trains: every problem is collected, then reported.

A user fixing a file wants the whole list at once, not one error per run; so `validate_frames`
never stops early, and `raise_for_errors` turns the list into one line (the first problem plus a
count and the rest). A row goes by the number the user finds it at (`row_numbers`): the line of its
file it starts on (CSV and TSV, whose header is line 1; JSONL), or its place counted from 1 in a
Parquet file or a hub dataset, which have no lines. Per-row checks are a pandera schema; checks
across rows and splits are plain pandas.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from bitune.data.sources import row_numbers
from bitune.data.splits import carve_plan, min_rows_per_class
from bitune.errors import DataError
from bitune.params import DataParams

SHOWN_ROWS = 5
IMBALANCE_WARNING = 10.0
LONG_TEXT_CHARS = 2_000  # beyond ~400 tokens: more than any usual preprocess.max_length keeps


class DataValidationError(DataError):
    """A DataError carrying every problem found; str() is the one-line summary."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = list(problems)
        rest = (
            f" (+{len(problems) - 1} more problems: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
        )
        where = f"{source}: " if source else ""  # rows are numbered, but in which file?
        super().__init__(where + problems[0] + rest)


@dataclass
class ValidationReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, float | int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_for_errors(self, source: str | None = None) -> None:
        """Raise a DataError (`.problems` holds all) when any error was found; `source` (the file or
        folder the rows came from) leads the message."""
        if self.errors:
            raise DataValidationError(self.errors, source)


def validate_frames(frames: dict[str, pd.DataFrame], data: DataParams) -> ValidationReport:
    """Check frames from `read_source` against `data`; errors fail the run, warnings are logged."""
    report = ValidationReport()
    if not frames:
        report.errors.append("the source gave no data; check data.source")
        return report
    usable: dict[str, pd.DataFrame] = {}
    numbers: dict[str, np.ndarray] = {}
    for split, frame in frames.items():
        missing = [c for c in ("text", "label") if c not in frame.columns]
        if missing:
            report.errors.append(
                f"{_in(split)}frame has no column {', '.join(missing)} (columns: "
                f"{', '.join(map(str, frame.columns))}); read data with read_source"
            )
            continue
        frame = frame[["text", "label"]].reset_index(drop=True)
        report.stats[f"rows_{split}"] = len(frame)
        if frame.empty:
            report.errors.append(f"{_in(split)}no data rows; the file has a header only — add rows")
            continue
        numbers[split] = row_numbers(frames, split)  # by place: the frame's own index was just reset
        report.errors.extend(_row_problems(split, frame, numbers[split], data))
        usable[split] = frame
    report.stats["rows"] = sum(len(f) for f in usable.values())
    if not usable:
        return report
    rows = pd.concat([f.assign(split=s, row=numbers[s]) for s, f in usable.items()], ignore_index=True)
    labelled = rows[rows["label"].notna() & (rows["label"].astype(str).str.strip() != "")]
    _check_label_spellings(labelled, data, report)
    _check_classes(labelled, frames, data, report)
    _check_duplicates(rows, data, report)
    _check_conflicts(rows, labelled, data, report)
    _check_leakage(rows, report)
    _check_lengths(rows, data, report)
    return report


def _in(split: str) -> str:
    return "" if split == "all" else f"{split}: "


def _where(split: str, row: int) -> str:
    return f"row {row}" if split == "all" else f"{split} row {row}"


def _rows(numbers: list[int]) -> str:
    shown = ", ".join(str(n) for n in numbers[:SHOWN_ROWS])
    more = f" (+{len(numbers) - SHOWN_ROWS} more)" if len(numbers) > SHOWN_ROWS else ""
    return f"row{'s' if len(numbers) > 1 else ''} {shown}{more}"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _excerpt(text: object, width: int = 40) -> str:
    flat = " ".join(str(text).split())
    return repr(flat if len(flat) <= width else flat[: width - 1] + "…")


def _schema(data: DataParams) -> pa.DataFrameSchema:
    """Per-row checks; each named so its failures map to one message."""

    def not_blank(s: pd.Series) -> pd.Series:
        return s.astype(str).str.strip() != ""

    text_checks = [
        pa.Check(not_blank, name="blank"),
        pa.Check(lambda s: s.astype(str).str.len() <= data.max_length_chars, name="too_long"),
    ]
    label_checks = [pa.Check(not_blank, name="blank")]
    if data.labels:
        allowed = set(data.labels)
        label_checks.append(pa.Check(lambda s: s.astype(str).isin(allowed), name="allowed"))
    return pa.DataFrameSchema(
        {
            "text": pa.Column(nullable=False, checks=text_checks),
            "label": pa.Column(nullable=False, checks=label_checks),
        }
    )


def _row_problems(split: str, frame: pd.DataFrame, numbers: np.ndarray, data: DataParams) -> list[str]:
    """The per-row problems of `frame` (index 0..n-1), its rows named by `numbers`."""
    try:
        _schema(data).validate(frame, lazy=True)
        return []
    except SchemaErrors as exc:
        cases = exc.failure_cases
    cases = cases[cases["index"].notna()].assign(place=lambda c: c["index"].astype(int))
    cases["check"] = cases["check"].replace({"not_nullable": "blank"})

    def places_of(column: str, check: str) -> list[int]:
        hit = cases[(cases["column"] == column) & (cases["check"] == check)]
        return sorted(set(hit["place"].tolist()))

    def rows_of(column: str, check: str) -> list[int]:
        return [int(numbers[place]) for place in places_of(column, check)]

    where, problems = _in(split), []
    if blank := rows_of("text", "blank"):
        problems.append(f"{where}missing or blank text at {_rows(blank)}; fill in or remove those rows")
    if long := rows_of("text", "too_long"):
        longest = int(frame["text"].dropna().astype(str).str.len().max())
        problems.append(
            f"{where}text longer than data.max_length_chars={data.max_length_chars} at "
            f"{_rows(long)} (longest {longest} chars); shorten them or raise "
            "data.max_length_chars"
        )
    if blank := rows_of("label", "blank"):
        problems.append(f"{where}missing or blank label at {_rows(blank)}; label or remove those rows")
    if outside := places_of("label", "allowed"):
        bad = frame.loc[outside, "label"].astype(str)
        listed = ", ".join(
            f"{label!r} ({_rows([int(numbers[place]) for place in places])})"
            for label, places in list(bad.groupby(bad).groups.items())[:3]
        )
        problems.append(
            f"{where}labels not in data.labels {data.labels}: {listed}; fix those rows or add "
            "the labels to data.labels"
        )
    return problems


def label_key(label: str) -> str:
    """A label without surrounding spaces or a trailing '.0': two labels with one key are one class
    written two ways (' 1' and '1', or '1.0' from a spreadsheet and '1')."""
    return re.sub(r"^([+-]?\d+)\.0+$", r"\1", label.strip())


def _check_label_spellings(labelled: pd.DataFrame, data: DataParams, report: ValidationReport) -> None:
    """Refused, not merged: labels become the model's class names and the data version keeps the file
    as written, so the user picks the spelling. With data.labels set, other spellings are reported
    as labels outside it. The message names the rarer spelling's first row, the likelier typo."""
    if data.labels:
        return
    labels = labelled["label"].astype(str)
    keys = labels.map(label_key)
    spellings = labels.groupby(keys, sort=False).unique()
    clashes = spellings[spellings.map(len) > 1]
    if clashes.empty:
        return
    key = clashes.index[0]
    counts = labels[keys == key].value_counts()  # most rows first; ties in order of first appearance
    common, rare = counts.index[0], counts.index[-1]

    def first_row(label: str) -> str:
        row = labelled[labels == label].iloc[0]
        return _where(row["split"], int(row["row"]))

    more = f" (+{len(clashes) - 1} more labels like it)" if len(clashes) > 1 else ""
    report.errors.append(
        f"label {rare!r} at {first_row(rare)} and {common!r} at {first_row(common)} differ only by "
        f"spaces or a trailing '.0', so they would be two classes{more}; write every {key!r} label the "
        "same way in the source"
    )


def _check_classes(
    labelled: pd.DataFrame, frames: dict[str, pd.DataFrame], data: DataParams, report: ValidationReport
) -> None:
    if data.labels:  # labels outside data.labels are reported per row already; don't count them as classes
        labelled = labelled[labelled["label"].astype(str).isin(data.labels)]
    counts = labelled["label"].astype(str).value_counts()
    report.stats["classes"] = len(counts)
    if len(counts) == 1:
        report.errors.append(
            f"only one class ({counts.index[0]!r}) in the data; a classifier needs at least "
            "two — check data.label_column"
        )
    if len(counts) < 2:
        return
    if counts.iloc[0] / counts.iloc[-1] > IMBALANCE_WARNING:
        report.warnings.append(
            f"class imbalance {counts.iloc[0] / counts.iloc[-1]:.0f}:1 ({counts.index[0]!r} "
            f"{counts.iloc[0]} rows, {counts.index[-1]!r} {counts.iloc[-1]}); watch macro-F1"
        )
    splits = set(labelled["split"])
    if "train" in splits:
        train_labels = set(labelled.loc[labelled["split"] == "train", "label"].astype(str))
        for split in ("validation", "test"):
            unseen = sorted(set(labelled.loc[labelled["split"] == split, "label"].astype(str)) - train_labels)
            if unseen:
                report.errors.append(
                    f"{split}: class {unseen[0]!r} is not in train"
                    f"{f' (+{len(unseen) - 1} more)' if len(unseen) > 1 else ''}; "
                    "the model cannot learn it — add train rows or drop it"
                )
    plan = carve_plan(sorted(frames), data.split)
    if plan is None:
        return
    source, fractions = plan
    need = min_rows_per_class(fractions)
    source_counts = labelled.loc[labelled["split"] == source, "label"].astype(str).value_counts()
    small = source_counts[source_counts < need]
    if len(small):
        listed = ", ".join(f"{label!r} has {_n(int(count), 'row')}" for label, count in small.head(3).items())
        more = f" (+{len(small) - 3} more classes)" if len(small) > 3 else ""
        report.errors.append(
            f"{_in(source)}too few rows per class: {listed}{more}; a stratified split into "
            f"{', '.join(f'{f:.0%}' for f in fractions)} needs at least {need} per class "
            "(2 per split) — add rows, drop the class, or change data.split"
        )


def _check_duplicates(rows: pd.DataFrame, data: DataParams, report: ValidationReport) -> None:
    """Exact repeats of (text, label) within a split; repeats across splits are leakage, checked apart."""
    repeated = rows.duplicated(["split", "text", "label"], keep=False)
    later = rows.duplicated(["split", "text", "label"], keep="first")
    count = int(later.sum())
    report.stats["duplicates"] = count
    if not count:
        return
    fraction = count / len(rows)
    example = rows[later].iloc[0]
    first = rows[repeated & ~later & (rows["split"] == example["split"]) & (rows["text"] == example["text"])]
    first_row = int(first.iloc[0]["row"]) if len(first) else "?"
    what = (
        f"{_n(count, 'duplicate row')} ({fraction:.1%} of {len(rows)}), e.g. "
        f"{_where(example['split'], int(example['row']))} repeats row {first_row}"
    )
    limit = f"data.max_duplicate_fraction={data.max_duplicate_fraction:g}"
    if fraction > data.max_duplicate_fraction:
        report.errors.append(f"{what}; above {limit} — drop duplicates from the source or raise that limit")
    else:
        report.warnings.append(f"{what}; within {limit}, kept")


def _check_conflicts(
    rows: pd.DataFrame, labelled: pd.DataFrame, data: DataParams, report: ValidationReport
) -> None:
    conflicting = _conflicting_texts(labelled)
    report.stats["conflicting_texts"] = len(conflicting)
    if conflicting.empty:
        return
    text = conflicting.index[0]
    examples = labelled[labelled["text"] == text].drop_duplicates("label").head(2)
    pairs = " and ".join(f"{r.label!r} at {_where(r.split, int(r.row))}" for r in examples.itertuples())
    what = (
        f"{len(conflicting)} text{'s have' if len(conflicting) > 1 else ' has'} more than "
        f"one label, e.g. {_excerpt(text)} is {pairs}"
    )
    if data.label_conflicts == "drop":
        dropped = int(rows["text"].isin(conflicting.index).sum())  # unlabelled rows of those texts too
        report.warnings.append(
            f"{what}; their {_n(dropped, 'row')} are dropped before splitting (data.label_conflicts: drop)"
        )
    else:
        report.errors.append(
            f"{what}; fix the labels, or set data.label_conflicts: drop to drop those texts' rows"
        )


def _conflicting_texts(labelled: pd.DataFrame) -> pd.Series:
    """Texts (the index) found with more than one label, with their label counts; first seen first."""
    labels_per_text = labelled.groupby("text", sort=False)["label"].nunique()
    return labels_per_text[labels_per_text > 1]


def drop_label_conflicts(frames: dict[str, pd.DataFrame]) -> tuple[dict[str, pd.DataFrame], str | None]:
    """`frames` without any row, in any split, of a text found with more than one label, and the
    warning that counts them (None: there were none). For data.label_conflicts: drop.

    The texts are those `validate_frames` reports (the exact text, over labelled rows). Splits follow
    from each row's text alone, so every other row stays in the split it had.
    """
    labelled = pd.concat(
        [f.loc[f["label"].notna() & (f["label"].astype(str).str.strip() != "")] for f in frames.values()],
        ignore_index=True,
    )
    conflicting = _conflicting_texts(labelled)
    if conflicting.empty:
        return frames, None
    kept = {split: f[~f["text"].isin(conflicting.index)] for split, f in frames.items()}
    dropped = sum(len(frames[split]) - len(f) for split, f in kept.items())
    warning = (
        f"dropped {_n(dropped, 'row')} of {_n(len(conflicting), 'text')} with more than one label, "
        f"e.g. {_excerpt(conflicting.index[0])} (data.label_conflicts: drop)"
    )
    return kept, warning


def _check_leakage(rows: pd.DataFrame, report: ValidationReport) -> None:
    """Pre-split sources only: a test text also in train inflates every test score."""
    train = rows[rows["split"] == "train"].drop_duplicates("text").set_index("text")["row"]
    for split, is_error in (("test", True), ("validation", False)):
        other = rows[(rows["split"] == split) & rows["text"].isin(train.index)].drop_duplicates("text")
        report.stats[f"leaked_{split}"] = len(other)
        if other.empty:
            continue
        example = other.iloc[0]
        message = (
            f"{_n(len(other), split + ' text')} also in train (leakage), e.g. {_excerpt(example['text'])} "
            f"at train row {int(train[example['text']])} and {split} row {int(example['row'])}"
        )
        if is_error:
            report.errors.append(f"{message}; remove them from one of the splits")
        else:
            report.warnings.append(f"{message}; early stopping will be optimistic")


def _check_lengths(rows: pd.DataFrame, data: DataParams, report: ValidationReport) -> None:
    chars = rows["text"].dropna().astype(str).str.len()
    report.stats["chars_mean"] = round(float(chars.mean()), 1) if len(chars) else 0.0
    report.stats["chars_p95"] = round(float(chars.quantile(0.95)), 1) if len(chars) else 0.0
    threshold = min(LONG_TEXT_CHARS, data.max_length_chars // 2)
    long = int(((chars > threshold) & (chars <= data.max_length_chars)).sum())
    if long:
        report.warnings.append(
            f"{_n(long, 'text')} longer than {threshold} chars; tokens past "
            "preprocess.max_length are truncated"
        )
