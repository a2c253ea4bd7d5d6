"""`bitune data diff`: what changed between two data versions, row by row.

The diff itself on frames (milliseconds), then the command on a real git + DVC project with a local
remote, versions made by `version_data_fn` as a run makes them: from the cache, from the remote alone
after the cache is lost, and refused in one line for versions that cannot be read.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_project
from test_data_versions import bitune, commit, data_files
from typer.testing import CliRunner

from bitune.data.version_diff import LabelChange, Relabel, Row, diff_versions, read_version
from bitune.params import DataParams
from flows.cli import app
from tasks.data import version_data_fn


def frame(*rows: tuple[str, str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["text", "label"])


def test_added_removed_and_relabelled_rows_with_per_label_counts() -> None:
    old = frame(("kept", "pos"), ("gone", "neg"), ("flipped", "pos"), ("also kept", "neg"))
    new = frame(("flipped", "neg"), ("kept", "pos"), ("fresh", "neu"), ("also kept", "neg"))
    changes = diff_versions(old, new)
    assert changes.added == [Row("fresh", "neu")]
    assert changes.removed == [Row("gone", "neg")]
    assert changes.relabelled == [Relabel("flipped", "pos", "neg")]
    assert (changes.old_rows, changes.new_rows, changes.unchanged, changes.changed) == (4, 4, 2, True)
    assert changes.labels == [
        LabelChange("neg", old=2, new=2, added=0, removed=1, relabelled_in=1, relabelled_out=0),
        LabelChange("neu", old=0, new=1, added=1, removed=0, relabelled_in=0, relabelled_out=0),
        LabelChange("pos", old=2, new=1, added=0, removed=0, relabelled_in=0, relabelled_out=1),
    ]


def test_case_spacing_and_unicode_form_edits_are_the_same_row() -> None:
    old = frame(("Great  movie", "pos"), ("ｆｕｌｌ width", "neg"), ("Dull film", "neg"))
    new = frame(("  great movie\n", "pos"), ("full width", "neg"), ("DULL   film", "pos"))
    changes = diff_versions(old, new)
    assert not changes.added and not changes.removed
    assert changes.relabelled == [Relabel("DULL   film", "neg", "pos")]  # the text as the new version has it
    respaced = frame(("Dull film", "neg"), *new.iloc[[1, 0]].itertuples(index=False))
    assert not diff_versions(old, respaced).changed  # row order does not count either


def test_repeated_texts_are_counted_copy_by_copy() -> None:
    """A text's labels are a multiset: copies both versions hold are unchanged, one copy less is one row
    removed, a copy with another label is relabelled when a copy went, else added."""
    twice = frame(("same", "pos"), ("same", "pos"))
    once = diff_versions(twice, frame(("same", "pos")))
    assert once.removed == [Row("same", "pos")] and not once.added and not once.relabelled
    assert once.unchanged == 1
    conflict = diff_versions(frame(("same", "pos")), frame(("same", "pos"), ("same", "neg")))
    assert conflict.added == [Row("same", "neg")] and not conflict.removed and not conflict.relabelled
    both = diff_versions(twice, frame(("same", "neg")))
    assert both.relabelled == [Relabel("same", "pos", "neg")] and both.removed == [Row("same", "pos")]
    assert not both.added
    thrice = diff_versions(
        frame(("x", "a"), ("x", "b"), ("x", "b")), frame(("x", "c"), ("x", "b"), ("x", "d"))
    )
    assert thrice.relabelled == [Relabel("x", "a", "c"), Relabel("x", "b", "d")]
    assert not thrice.added and not thrice.removed and thrice.unchanged == 1


def test_each_labels_new_count_is_old_plus_its_changes() -> None:
    old = frame(*[(f"t{i}", "ab"[i % 2]) for i in range(30)], ("dup", "a"), ("dup", "a"))
    new = frame(*[(f"T{i} ", "abc"[i % 3]) for i in range(5, 40)], ("dup", "b"))
    changes = diff_versions(old, new)
    for c in changes.labels:
        assert c.new == c.old + c.added - c.removed + c.relabelled_in - c.relabelled_out, c
    assert changes.new_rows - changes.old_rows == len(changes.added) - len(changes.removed)
    assert changes.unchanged + len(changes.added) + len(changes.relabelled) == changes.new_rows


def test_a_version_is_read_by_the_columns_a_run_would_read(tmp_path: Path) -> None:
    (tmp_path / "reviews.csv").write_text("review,sentiment,id\nGood,pos,1\nBad,neg,2\n")
    custom = DataParams(text_column="review", label_column="sentiment")
    assert read_version(tmp_path, custom).to_dict("records") == [
        {"text": "Good", "label": "pos"},
        {"text": "Bad", "label": "neg"},
    ]
    (tmp_path / "reviews.csv").write_text("text,label\nGood,pos\n")  # as bitune stores data/
    assert read_version(tmp_path, custom).to_dict("records") == [{"text": "Good", "label": "pos"}]
    split = tmp_path / "split"
    split.mkdir()
    (split / "train.csv").write_text("text,label\nA,x\n")
    (split / "test.tsv").write_text("text\tlabel\nB\ty\n")
    assert sorted(read_version(split, DataParams())["text"]) == ["A", "B"]  # every split's rows


LONG = "a long review that says a great deal about the film, " * 4


def old_rows() -> pd.DataFrame:
    rows = [(f"review {i} of the film", ["positive", "negative"][i % 2]) for i in range(60)]
    return frame(*rows, ("said twice", "positive"), ("said twice", "positive"))


def new_rows() -> pd.DataFrame:
    """From old_rows: review 0 relabelled, review 1 respaced, reviews 2 and 3 and one copy of a
    repeated text removed, 20 long neutral reviews added."""
    rows = old_rows()
    rows.loc[0, "label"] = "negative"
    rows.loc[1, "text"] = "  Review 1   OF the film\n"
    rows = rows.drop(index=[2, 3, 61])
    return pd.concat([rows, frame(*[(f"{i}: {LONG}", "neutral") for i in range(20)])], ignore_index=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Versions A then B of reviews.csv, each versioned as a run does and committed."""
    root = make_project(tmp_path_factory.mktemp("project"), Path())
    csv = tmp_path_factory.mktemp("source") / "reviews.csv"
    out: dict[str, object] = {"root": root}
    for name, rows in (("a", old_rows()), ("b", new_rows())):
        rows.to_csv(csv, index=False)
        out[name] = version_data_fn(DataParams(source=str(csv)), root).md5
        commit(root, f"data {name}")
    out["dvc_file"], out["files"] = (root / "data.dvc").read_bytes(), data_files(root)
    out["git_status"] = git_status(root)
    return out


def git_status(root: Path) -> str:
    return subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def unchanged_project(project: dict[str, object]) -> None:
    """data/, data.dvc and the git working tree as the last version left them; no file left behind."""
    root = project["root"]
    assert isinstance(root, Path)
    assert (root / "data.dvc").read_bytes() == project["dvc_file"] and data_files(root) == project["files"]
    # no throwaway .dvc file left behind, the remote as it was; an error's traceback goes to the log
    assert git_status(root).replace("?? .bitune/logs/bitune.log\n", "") == project["git_status"]


def expected_json(a: str, b: str) -> dict[str, object]:
    def label(name: str, *counts: int) -> dict[str, object]:
        keys = ("old", "new", "added", "removed", "relabelled_in", "relabelled_out")
        return {"label": name, **dict(zip(keys, counts, strict=True))}

    return {
        "old": a,
        "new": b,
        "rows": {"old": 62, "new": 79},
        "added": 20,
        "removed": 3,
        "relabelled": 1,
        "unchanged": 58,
        "labels": [
            label("negative", 30, 30, 0, 1, 1, 0),
            label("neutral", 0, 20, 20, 0, 0, 0),
            label("positive", 32, 29, 0, 2, 0, 1),
        ],
        "examples": {
            "added": [{"text": f"{i}: {LONG}", "label": "neutral"} for i in range(2)],
            "removed": [
                {"text": "review 2 of the film", "label": "positive"},
                {"text": "review 3 of the film", "label": "negative"},
            ],
            "relabelled": [
                {"text": "review 0 of the film", "old_label": "positive", "new_label": "negative"}
            ],
        },
    }


@pytest.mark.slow
def test_json_diff_from_a_prefix_to_the_current_version(project) -> None:  # type: ignore[no-untyped-def]
    proc = bitune(project["root"], "data", "diff", project["a"][:7], "--json", "--examples", "2")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == expected_json(project["a"], project["b"])
    unchanged_project(project)


@pytest.mark.slow
def test_table_fits_80_columns_with_counts_and_cut_examples(project) -> None:  # type: ignore[no-untyped-def]
    proc = bitune(project["root"], "data", "diff", project["a"], project["b"][:6])
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(map(len, lines)) <= 80, proc.stdout
    assert lines[0] == f"{project['a']} → {project['b']}"
    assert [
        line.split() for line in lines if line.split()[:1] in (["negative"], ["neutral"], ["positive"])
    ] == [
        ["negative", "30", "30", "+0", "0", "1", "+1"],
        ["neutral", "0", "20", "+20", "20", "0", "0"],
        ["positive", "32", "29", "-3", "0", "2", "-1"],
    ]
    assert "20 rows added, 3 removed, 1 relabelled (same text, another label), 58 unchanged." in lines
    assert "added (20, first 3):" in lines and "removed (3):" in lines and "relabelled (1):" in lines
    examples = [line for line in lines if line.startswith("  + ")]
    assert len(examples) == 3 and all(len(line) == 80 and line.endswith("…") for line in examples)
    assert examples[0].startswith("  + neutral  0: a long review that says")
    assert "  ~ positive → negative  review 0 of the film" in lines
    unchanged_project(project)


@pytest.mark.slow
def test_edits_in_data_that_no_version_records_are_named_not_diffed(project) -> None:  # type: ignore[no-untyped-def]
    root = project["root"]
    (name, content), *_ = project["files"].items()
    (root / "data" / name).write_bytes(content + b"an edit nobody versioned,positive\n")
    try:
        proc = bitune(root, "data", "diff", project["a"], "--json", "--examples", "2")
    finally:
        (root / "data" / name).write_bytes(content)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == expected_json(project["a"], project["b"])
    assert "note: data/ has edits data.dvc does not record; they are not in this diff." in proc.stderr


def test_without_new_a_project_with_no_data_version_is_told_to_name_both(tmp_path: Path) -> None:
    root = make_project(tmp_path / "project", Path())
    result = CliRunner().invoke(app, ["data", "diff", "f" * 32, "--project", str(root)])
    assert result.exit_code == 2 and result.stdout == "", result.output
    assert result.stderr.splitlines()[0] == (
        "error: data.dvc: no current data version to compare with; name both versions, e.g. "
        "`bitune data diff OLD NEW` (see `bitune data versions`)"
    )
    result = CliRunner().invoke(app, ["data", "diff", "f" * 32, "--project", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such folder" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project"]


@pytest.mark.slow
def test_a_version_with_itself_has_no_changes(project) -> None:  # type: ignore[no-untyped-def]
    proc = bitune(project["root"], "data", "diff", project["b"][:8], project["b"])
    assert proc.returncode == 0, proc.stderr
    assert " ".join(proc.stdout.split()).startswith(
        f"No changes from {project['b']} to {project['b']}: the same 79"
    )


@pytest.mark.slow
def test_versions_only_in_the_remote_are_fetched_without_touching_data(project) -> None:  # type: ignore[no-untyped-def]
    root = project["root"]
    objects = root / ".dvc" / "cache" / "files" / "md5"
    for path in objects.glob("*/*"):  # the versions' manifests stay, their files go
        if not path.name.endswith(".dir"):
            path.unlink()
    for lost in ("files", "everything"):
        proc = bitune(root, "data", "diff", project["a"], project["b"], "--json", "--examples", "2")
        assert proc.returncode == 0, (lost, proc.stderr)
        assert json.loads(proc.stdout) == expected_json(project["a"], project["b"])
        assert len(list(objects.glob("*/*"))) == 4  # two manifests, one file each: fetched into the cache
        unchanged_project(project)
        shutil.rmtree(root / ".dvc" / "cache")


@pytest.mark.slow
def test_versions_that_cannot_be_read_are_one_line_errors_and_change_nothing(project) -> None:  # type: ignore[no-untyped-def]
    root = project["root"]
    unpushed = ["aaaa1" + "0" * 27 + ".dir", "aaaa2" + "0" * 27 + ".dir"]
    for md5 in unpushed:  # versioned on another machine and never pushed: only git records them
        (root / "data.dvc").write_text(f"outs:\n- md5: {md5}\n  hash: md5\n  path: data\n")
        commit(root, "a data version from elsewhere")
    (root / "data.dvc").write_bytes(project["dvc_file"])
    commit(root, "back to B")
    for args, expected in (
        (["zz"], "data version 'zz': no known data version starts with it"),
        (["aaaa"], "data version 'aaaa': 2 data versions (aaaa1"),
        (["aaaa1", project["b"]], f"data version {unpushed[0]} is recorded in git (data.dvc history) but"),
        ([project["a"], "f" * 32], f"data version {'f' * 32}.dir: not in the DVC remote"),
    ):
        proc = bitune(root, "data", "diff", *args)
        assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr, (args, proc.stderr)
        assert expected in " ".join(proc.stderr.split()), (args, proc.stderr)
        assert proc.stderr.startswith("error: ") and not proc.stdout, (args, proc.stderr)
        unchanged_project(project)
