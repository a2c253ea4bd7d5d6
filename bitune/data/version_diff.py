"""What changed between two data versions, row by row: rows added, removed and relabelled.

`dvc diff` names the files that changed; retraining needs the rows. Rows are matched by the text key
the splits use (`split_key`), so a row whose text changed only in Unicode form, case or spacing is the
same row, as it is for splitting and for the seen-text fingerprints. Texts repeat in real data, so
each text holds a multiset of labels: per text, the labels both versions have (counted) are
unchanged; of what is left, a row the old version has and the new one lacks pairs with a new row of
another label as *relabelled* (same text, different label), and whatever still has no partner is
*removed* (old side) or *added* (new side). Two copies of "great" as positive becoming one is one
row removed; "great" positive becoming "great" negative plus "great" positive is one row added.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bitune.data.sources import read_source
from bitune.data.splits import split_key
from bitune.params import DataParams

MISSING_LABEL = "(none)"  # a null label, as counted and shown (validated versions hold none)


@dataclass(frozen=True)
class Row:
    text: str
    label: str


@dataclass(frozen=True)
class Relabel:
    """One row whose text both versions hold, with another label in the new one (text as in new)."""

    text: str
    old_label: str
    new_label: str


@dataclass(frozen=True)
class LabelChange:
    """One label's rows in each version and the changes behind the difference:
    new = old + added - removed + relabelled_in - relabelled_out."""

    label: str
    old: int
    new: int
    added: int
    removed: int
    relabelled_in: int
    relabelled_out: int


@dataclass(frozen=True)
class VersionDiff:
    """Rows in the order they appear: added and relabelled in the new version, removed in the old."""

    old_rows: int
    new_rows: int
    added: list[Row]
    removed: list[Row]
    relabelled: list[Relabel]
    labels: list[LabelChange]  # sorted by label

    @property
    def unchanged(self) -> int:
        return self.old_rows - len(self.removed) - len(self.relabelled)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.relabelled)


def read_version(folder: Path, data: DataParams) -> pd.DataFrame:
    """A version's files (materialised in `folder`) as one frame of `text` and `label`, read as a run
    reads data/: the configured columns where the files have them, else `text` and `label`. The rows
    of a pre-split version's files are taken together: a row moving between splits is no change."""
    raw = read_source(data.model_copy(update={"source": "data"}), folder)
    return pd.concat(list(raw.frames.values()), ignore_index=True)


def diff_versions(old: pd.DataFrame, new: pd.DataFrame) -> VersionDiff:
    """Row changes from `old` to `new` (frames with `text` and `label`), matched as the module says."""
    old_groups, new_groups = _by_text_key(old), _by_text_key(new)
    added: list[Row] = []
    removed: list[Row] = []
    relabelled: list[Relabel] = []
    for key, (text, labels) in new_groups.items():
        before = old_groups[key][1] if key in old_groups else Counter()
        gone, came = _unmatched(before, labels)
        relabelled.extend(Relabel(text, was, now) for was, now in zip(gone, came, strict=False))
        added.extend(Row(text, label) for label in came[len(gone) :])
    for key, (text, labels) in old_groups.items():
        after = new_groups[key][1] if key in new_groups else Counter()
        gone, came = _unmatched(labels, after)
        removed.extend(Row(text, label) for label in gone[len(came) :])
    return VersionDiff(
        old_rows=len(old),
        new_rows=len(new),
        added=added,
        removed=removed,
        relabelled=relabelled,
        labels=_label_changes(old, new, added, removed, relabelled),
    )


def _label(value: object) -> str:
    return MISSING_LABEL if value is None or (isinstance(value, float) and value != value) else str(value)


def _by_text_key(frame: pd.DataFrame) -> dict[str, tuple[str, Counter[str]]]:
    """Text key -> (the first text with that key, as written; its labels, counted), in row order."""
    groups: dict[str, tuple[str, Counter[str]]] = {}
    for text, label in zip(frame["text"], frame["label"], strict=True):
        key = split_key(text)
        if key not in groups:
            groups[key] = (str(text), Counter())
        groups[key][1][_label(label)] += 1
    return groups


def _unmatched(old: Counter[str], new: Counter[str]) -> tuple[list[str], list[str]]:
    """The labels of one text's rows that only the old side has, and those only the new side has,
    each sorted, so pairing them up (relabelled) and the leftovers are the same on every run."""
    return sorted((old - new).elements()), sorted((new - old).elements())


def _label_changes(
    old: pd.DataFrame, new: pd.DataFrame, added: list[Row], removed: list[Row], relabelled: list[Relabel]
) -> list[LabelChange]:
    before = Counter(_label(v) for v in old["label"])
    after = Counter(_label(v) for v in new["label"])
    plus = Counter(r.label for r in added)
    minus = Counter(r.label for r in removed)
    into = Counter(r.new_label for r in relabelled)
    out_of = Counter(r.old_label for r in relabelled)
    return [
        LabelChange(label, before[label], after[label], plus[label], minus[label], into[label], out_of[label])
        for label in sorted(before.keys() | after.keys())
    ]
