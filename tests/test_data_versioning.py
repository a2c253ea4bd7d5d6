"""Which data a run versions, decided without DVC: the current version's md5 is passed in.

The same cases run end to end on real DVC repos in test_demo_never_replaces_data.py; here each
decision is a millisecond test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bitune.data.demo import DEMO_FILE, DEMO_MARKER, demo_files, holds_demo
from bitune.data.versioning import dir_md5, files_in, read_to_version, source_to_version
from bitune.errors import DataError
from bitune.params import DataParams

DEMO = DataParams(demo_rows=60)
DEMO_FILES = demo_files(60, 0)
OTHER_VERSION = "0123456789abcdef0123456789abcdef.dir"


def write(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


def test_dir_md5_depends_on_names_and_contents_not_order() -> None:
    files = {"a.csv": b"text,label\n", "b.csv": b"x,y\n"}
    md5 = dir_md5(files)
    assert md5.endswith(".dir") and len(md5) == 32 + len(".dir")
    assert dir_md5(dict(reversed(files.items()))) == md5
    assert dir_md5({"a.csv": b"text,label\n", "c.csv": b"x,y\n"}) != md5
    assert dir_md5({"a.csv": b"text,label\n", "b.csv": b"x,z\n"}) != md5


def test_a_source_other_than_the_demo_is_versioned_as_given(tmp_path: Path) -> None:
    data = DataParams(source="reviews.csv")
    assert source_to_version(data, tmp_path, OTHER_VERSION).data is data


def test_the_demo_is_written_while_there_is_no_data_version(tmp_path: Path) -> None:
    write(tmp_path / "data", {"reviews.csv": b"text,label\n"})  # files but no data.dvc yet
    chosen = source_to_version(DEMO, tmp_path, None)
    assert chosen.data.source == "demo" and chosen.warning is None


def test_the_demo_replaces_an_unedited_demo(tmp_path: Path) -> None:
    write(tmp_path / "data", demo_files(40, 0))  # another demo size: still a demo
    assert holds_demo(tmp_path / "data")
    assert source_to_version(DEMO, tmp_path, dir_md5(demo_files(40, 0))).data.source == "demo"


@pytest.mark.parametrize(
    "recorded", [DEMO_FILES, {DEMO_FILE: DEMO_FILES[DEMO_FILE]}], ids=["marked", "unmarked"]
)
def test_a_fresh_clone_of_the_demo_writes_the_demo(tmp_path: Path, recorded: dict[str, bytes]) -> None:
    """data/ empty (never pulled) and data.dvc names this very demo, with or without its marker."""
    write(tmp_path / "data", {".gitignore": b"*\n"})
    assert source_to_version(DEMO, tmp_path, dir_md5(recorded)).data.source == "demo"


def test_an_empty_data_folder_of_real_data_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"records data version 01234567.*`bitune data checkout 01234567`"):
        source_to_version(DEMO, tmp_path, OTHER_VERSION)
    assert not (tmp_path / "data").exists()  # nothing written


def test_the_demo_never_replaces_the_users_data(tmp_path: Path) -> None:
    files = {"reviews.csv": b"text,label\ngood,positive\n"}
    write(tmp_path / "data", files)
    chosen = source_to_version(DEMO, tmp_path, dir_md5(files))  # data.dvc records what data/ holds
    assert chosen.data.source == "data"
    assert chosen.data.model_copy(update={"source": "demo"}) == DEMO  # nothing else changed
    assert chosen.warning is not None
    assert dir_md5(files) in chosen.warning and "not the demo" in chosen.warning


def test_an_edited_demo_is_the_users_data_versioned_only_when_asked(tmp_path: Path) -> None:
    """Hand edits of the demo are never overwritten: a plain run stops and names both versions,
    `data.source=data` versions the edits."""
    edited = {**DEMO_FILES, DEMO_FILE: DEMO_FILES[DEMO_FILE] + b"my own row,positive\n"}
    write(tmp_path / "data", edited)
    with pytest.raises(DataError, match=rf"holds data version {dir_md5(edited)} but data.dvc records"):
        source_to_version(DEMO, tmp_path, dir_md5(DEMO_FILES))
    as_data = DataParams(source="data", demo_rows=60)
    assert source_to_version(as_data, tmp_path, dir_md5(DEMO_FILES)).data is as_data
    assert source_to_version(DEMO, tmp_path, dir_md5(edited)).data.source == "data"  # once versioned


def test_files_in_ignores_gitignore_and_reads_nothing_from_a_missing_folder(tmp_path: Path) -> None:
    assert files_in(tmp_path / "missing") is None
    folder = write(tmp_path / "data", {".gitignore": b"*\n"})
    assert files_in(folder) is None
    write(folder, {"a.csv": b"1"})
    assert files_in(folder) == {"a.csv": b"1"}


def test_the_demo_is_versioned_with_its_marker(tmp_path: Path) -> None:
    raw = read_to_version(DEMO, tmp_path / "data")
    assert raw.files == DEMO_FILES and set(raw.files) == {DEMO_FILE, DEMO_MARKER}
    assert len(raw.frames["all"]) == 60
