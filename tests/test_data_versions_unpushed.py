"""A data version git records but the DVC remote lacks (the forgotten `dvc push`): `bitune data versions`
keeps listing it, since data.dvc or git's history names it, but marks it and says, under the table, what
a checkout of it can do in this clone and which command fixes it where. Its checkout stays a one-line
error that changes nothing, and the fix the listing names works.

Two real git clones sharing one local DVC remote, and the `bitune data` commands as a user types them.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, make_project

from bitune.data.demo import make_demo_frame
from bitune.params import DataParams
from tasks import dvc_store
from tasks.data import version_data_fn

pytestmark = pytest.mark.slow


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=root, check=True)


def bitune(root: Path, remote: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "bitune"), "data", *args, "--project", str(root)]
        + ["--set", f"data.remote={remote}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def listing(root: Path, remote: Path | str) -> tuple[dict[str, dict[str, object]], str]:
    """(md5 -> the version's JSON, the table and the lines under it with their wrapping undone)."""
    as_json = bitune(root, remote, "versions", "--json")
    table = bitune(root, remote, "versions")
    assert as_json.returncode == table.returncode == 0, as_json.stderr + table.stderr
    assert max(len(line) for line in table.stdout.splitlines()) <= 80, table.stdout
    return {v["md5"]: v for v in json.loads(as_json.stdout)}, " ".join(table.stdout.split())


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def state(root: Path, remote: Path) -> dict[str, object]:
    """What a refused checkout must leave as it was: data.dvc, data/, the cache, the remote."""
    return {
        "data.dvc": (root / "data.dvc").read_bytes(),
        "data": files(root / "data") if (root / "data").exists() else None,
        "cache": sorted(files(root / ".dvc" / "cache")) if (root / ".dvc" / "cache").exists() else None,
        "remote": sorted(files(remote)),
    }


@pytest.fixture(scope="module")
def clones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Clone A: version 1 pushed by bitune, then version 2 added by hand (`dvc add data`) and committed,
    never pushed. Clone B: a `git clone` of A. Both use the shared remote through data.remote."""
    base = tmp_path_factory.mktemp("clones")
    remote = base / "remote"
    a = make_project(base / "a", Path())
    make_demo_frame(80, 1).to_csv(base / "reviews.csv", index=False)
    v1 = version_data_fn(DataParams(source=str(base / "reviews.csv"), remote=str(remote)), a).md5
    git(a, "add", "-A")
    git(a, "commit", "-q", "-m", "data version 1")
    make_demo_frame(80, 2).to_csv(a / "data" / "reviews.csv", index=False)
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "data"], cwd=a, check=True)
    git(a, "commit", "-q", "-am", "data version 2, `dvc push` forgotten")
    v2 = dvc_store.data_version(a)
    assert v2 is not None and v2 != v1
    subprocess.run(["git", "clone", "-q", str(a), str(base / "b")], check=True)
    return {"a": a, "b": base / "b", "remote": remote, "v1": v1, "v2": v2, "files_v2": files(a / "data")}


def test_the_clone_without_it_sees_it_marked_with_the_fix(clones) -> None:  # type: ignore[no-untyped-def]
    b, remote, v1, v2 = clones["b"], clones["remote"], clones["v1"], clones["v2"]
    listed, table = listing(b, remote)
    assert listed.keys() == {v1, v2}  # listed, not hidden: data.dvc and git's history name it
    assert (listed[v1]["in_remote"], listed[v1]["in_cache"]) == (True, False)
    assert (listed[v2]["in_remote"], listed[v2]["in_cache"], listed[v2]["current"]) == (False, False, True)
    assert table.count("(not in the remote)") == 1
    assert table.index(v2) < table.index("(not in the remote)")  # on version 2's row
    assert table.endswith(
        f"Not in the remote: {v2[:8]} is not in this clone's cache either, so no checkout can restore it; "
        "run `dvc push --all-commits` in the clone that versioned it."
    )


def test_its_checkout_there_is_one_line_and_changes_nothing(clones) -> None:  # type: ignore[no-untyped-def]
    b, remote, v2 = clones["b"], clones["remote"], clones["v2"]
    before = state(b, remote)
    proc = bitune(b, remote, "checkout", v2[:8])
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 2 and "Traceback" not in proc.stdout, proc.stderr
    assert lines[0].startswith(
        f"error: data version {v2} is recorded in git (data.dvc history) but its files are not in the DVC "
        f"remote {remote}"
    )
    assert lines[0].endswith(
        "run `dvc push --all-commits` in a clone that has it (the one that versioned it), or pick a version "
        "in the remote (`bitune data versions`)"
    )
    assert state(b, remote) == before


def test_the_clone_that_versioned_it_is_told_to_push_from_there(clones) -> None:  # type: ignore[no-untyped-def]
    a, remote, v1, v2 = clones["a"], clones["remote"], clones["v1"], clones["v2"]
    listed, table = listing(a, remote)
    assert (listed[v2]["in_remote"], listed[v2]["in_cache"]) == (False, True)
    assert (listed[v1]["in_remote"], listed[v1]["in_cache"]) == (True, True)
    assert table.endswith(
        f"Not in the remote: {v2[:8]} is only in this clone's cache (a checkout works here, in no other "
        "clone); run `dvc push --all-commits` here."
    )
    for version in (v1, v2, v1):  # as the line says, a checkout of it works here; then A is back on 1
        proc = bitune(a, remote, "checkout", version[:8])
        assert proc.returncode == 0, proc.stderr
        if version == v2:
            assert files(a / "data") == clones["files_v2"]


def test_the_push_the_listing_names_makes_it_restorable_in_the_other_clone(clones) -> None:  # type: ignore[no-untyped-def]
    """Last in the module: it pushes version 2, from clone A whose workspace is on version 1 (a plain
    `dvc push` would push only that)."""
    a, b, remote, v2 = clones["a"], clones["b"], clones["remote"], clones["v2"]
    command = shlex.split(dvc_store.PUSH_ALL)
    assert command[0] == "dvc"
    subprocess.run([sys.executable, "-m", *command], cwd=a, check=True, capture_output=True)
    listed, table = listing(b, remote)
    assert listed[v2]["in_remote"] is True and "not in the remote" not in table.lower()
    proc = bitune(b, remote, "checkout", v2[:8])
    assert proc.returncode == 0, proc.stderr
    assert files(b / "data") == clones["files_v2"]


def test_a_url_remote_is_not_looked_into_and_the_listing_says_so(clones) -> None:  # type: ignore[no-untyped-def]
    listed, table = listing(clones["b"], "s3://bucket/prefix")
    assert {v["in_remote"] for v in listed.values()} == {None}
    assert "not in the remote" not in table.lower()
    assert table.endswith(
        "The remote s3://bucket/prefix is not a local folder: which versions it holds was not checked."
    )


def test_a_remote_that_lost_one_file_of_a_version_does_not_hold_it(tmp_path: Path) -> None:
    """The manifest alone is not the version: a checkout needs every file (a partial `dvc gc -c`, a
    copy of the remote that stopped halfway)."""
    root = make_project(tmp_path / "project", Path())
    remote = root / ".dvc-storage"
    folder = tmp_path / "splits"
    folder.mkdir()
    make_demo_frame(80, 1).to_csv(folder / "train.csv", index=False)
    make_demo_frame(40, 2).to_csv(folder / "test.csv", index=False)
    version = version_data_fn(DataParams(source=str(folder)), root).md5
    git(root, "add", "data.dvc", ".gitignore")
    git(root, "commit", "-q", "-m", "data")
    manifest = json.loads(
        (remote / "files" / "md5" / version[:2] / version[2:]).read_text()
    )  # [{"md5": ..., "relpath": ...}]
    lost = next(entry["md5"] for entry in manifest if entry["relpath"] == "test.csv")
    (remote / "files" / "md5" / lost[:2] / lost[2:]).unlink()

    listed, table = listing(root, remote)
    assert (listed[version]["in_remote"], listed[version]["in_cache"]) == (False, True)
    assert listed[version]["files"] == ["test.csv", "train.csv"]  # the manifest is still there to read
    assert f"Not in the remote: {version[:8]} is only in this clone's cache" in table

    (root / ".dvc" / "cache" / "files" / "md5" / lost[:2] / lost[2:]).unlink()
    listed, table = listing(root, remote)
    assert (listed[version]["in_remote"], listed[version]["in_cache"]) == (False, False)
    assert f"Not in the remote: {version[:8]} is not in this clone's cache either" in table
    before = state(root, remote)
    proc = bitune(root, remote, "checkout", version[:8], "--force")
    assert proc.returncode == 2 and f"error: data version {version} is recorded in git" in proc.stderr
    assert state(root, remote) == before
