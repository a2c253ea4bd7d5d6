"""data.dvc names one data version and data/ holds another: a run given no new source stops, names both,
and changes nothing, instead of versioning data/ and writing data.dvc back (undoing a
`git checkout REV -- data.dvc`). Real git and DVC repos, `version_data_fn`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_project
from project_state import data_state

from bitune.data.demo import make_demo_frame
from bitune.data.versioning import folder_md5
from bitune.errors import DataError
from bitune.params import DataParams
from tasks import dvc_store
from tasks.data import version_data_fn

pytestmark = pytest.mark.slow

PLAIN = DataParams(demo_rows=60)  # `bitune run` with the default source, 'demo'


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=root, check=True)


@pytest.fixture
def two_versions(tmp_path: Path) -> tuple[Path, str, str]:
    """A project whose git history has data version A, with B versioned after it (data.dvc, data/)."""
    project = make_project(tmp_path / "project", Path())
    for seed, name in ((1, "v1.csv"), (2, "v2.csv")):
        make_demo_frame(80, seed).to_csv(tmp_path / name, index=False)
    first = version_data_fn(DataParams(source=str(tmp_path / "v1.csv")), project)
    git(project, "add", "data.dvc", ".gitignore")
    git(project, "commit", "-q", "-m", "data A")
    second = version_data_fn(DataParams(source=str(tmp_path / "v2.csv")), project)
    git(project, "commit", "-q", "-am", "data B")
    assert first.md5 != second.md5
    return project, first.md5, second.md5


def test_a_checked_out_data_dvc_is_not_undone(two_versions: tuple[Path, str, str]) -> None:
    """The audit's repro: `git checkout HEAD~1 -- data.dvc`, then a plain run."""
    project, a, b = two_versions
    git(project, "checkout", "HEAD~1", "--", "data.dvc")
    before = data_state(project)
    with pytest.raises(DataError) as caught:
        version_data_fn(PLAIN, project)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"data/ holds data version {b} but data.dvc records {a}; nothing was changed")
    assert f"`bitune data checkout {a[:8]} --force`" in message and "--set data.source=data" in message
    assert data_state(project) == before  # data.dvc still records A, data/ holds B, nothing pushed


def test_either_fix_the_message_names_works(two_versions: tuple[Path, str, str]) -> None:
    project, a, b = two_versions
    git(project, "checkout", "HEAD~1", "--", "data.dvc")
    dvc_store.checkout(project, a, force=True)  # `bitune data checkout A --force`
    assert version_data_fn(PLAIN, project).md5 == a  # the plain run now trains on A
    dvc_store.checkout(project, b, force=True)  # data/ back to B, then data.dvc to A again
    git(project, "checkout", "HEAD~1", "--", "data.dvc")
    kept = version_data_fn(DataParams(source="data", demo_rows=60), project)  # --set data.source=data
    assert kept.md5 == b and dvc_store.data_version(project) == b


def test_data_dvc_and_data_that_agree_are_reused_without_a_word(two_versions: tuple[Path, str, str]) -> None:
    project, _, b = two_versions
    before = data_state(project)
    again = version_data_fn(PLAIN, project)
    assert again.md5 == b and not again.changed and data_state(project) == before


def test_an_empty_data_folder_with_source_data_names_the_version_to_check_out(
    two_versions: tuple[Path, str, str],
) -> None:
    project, _, b = two_versions
    for path in (project / "data").iterdir():
        path.unlink()
    with pytest.raises(DataError, match=rf"data/ is empty while data.dvc records data version {b}; "):
        version_data_fn(DataParams(source="data"), project)
    with pytest.raises(DataError, match=rf"`bitune data checkout {b[:8]}`"):
        version_data_fn(PLAIN, project)
    assert dvc_store.data_version(project) == b


def test_folder_md5_is_what_dvc_add_records(tmp_path: Path) -> None:
    """Nested and hidden files and a .gitignore count, as they do for DVC; a .dvcignore with a pattern
    makes the folder's md5 unknowable without DVC, so it is not compared."""
    project = make_project(tmp_path / "project", Path())
    data = project / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.csv").write_text("text,label\na,1\n")
    (data / "sub" / "b.csv").write_text("text,label\nb,2\n")
    (data / ".hidden").write_text("x")
    (data / ".gitignore").write_text("*\n")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=project, check=True)
    assert folder_md5(project, data) is not None  # `dvc init`'s .dvcignore holds only comments
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "data"], cwd=project, check=True)
    assert folder_md5(project, data) == dvc_store.data_version(project)
    (project / ".dvcignore").write_text("*.tmp\n")
    assert folder_md5(project, data) is None
