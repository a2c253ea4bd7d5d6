"""Data versions for real: two ingests into a git + DVC project, listed, and the first one restored.

Runs `version_data_fn` (validate -> data/ -> dvc add -> push) and the `bitune data` commands as a
user types them; no flow, no model.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from conftest import REPO, make_project

from bitune.data.demo import make_demo_frame
from bitune.errors import DataError
from bitune.params import DataParams
from tasks import dvc_store
from tasks.data import version_data_fn

pytestmark = pytest.mark.slow


def bitune(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "bitune"), *args, "--project", str(root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def data_files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "data").iterdir()) if p.is_file()}


def commit(root: Path, message: str) -> None:
    subprocess.run(["git", "add", "data.dvc"], cwd=root, check=True)
    subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", message],
        cwd=root,
        check=True,
    )


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Version A (a.csv), then version B (b.csv), each committed; what each left behind."""
    root = make_project(tmp_path_factory.mktemp("project"), Path())
    sources = tmp_path_factory.mktemp("sources")
    out: dict[str, object] = {"root": root}
    for name, seed in (("a", 1), ("b", 2)):
        csv = sources / f"{name}.csv"
        make_demo_frame(80, seed).to_csv(csv, index=False)
        version = version_data_fn(DataParams(source=str(csv)), root)
        out[name] = {
            "md5": version.md5,
            "changed": version.changed,
            "clean_remote": dvc_store.remote_has_current(root),
            "dvc_file": (root / "data.dvc").read_bytes(),
            "files": data_files(root),
            "source": csv.read_bytes(),
        }
        commit(root, f"data {name}")
    return out


def test_each_ingest_is_a_new_version_fully_in_the_remote(two_versions) -> None:  # type: ignore[no-untyped-def]
    a, b = two_versions["a"], two_versions["b"]
    assert a["md5"] != b["md5"] and a["changed"] and b["changed"]
    assert a["clean_remote"] and b["clean_remote"]  # `dvc status -c` clean after each push
    assert a["files"] == {"a.csv": a["source"]} and b["files"] == {"b.csv": b["source"]}


def test_versions_lists_both_with_dates_files_and_the_current_one(two_versions) -> None:  # type: ignore[no-untyped-def]
    root, a, b = two_versions["root"], two_versions["a"], two_versions["b"]
    proc = bitune(root, "data", "versions", "--json")
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert [v["md5"] for v in listed] == [a["md5"], b["md5"]]  # oldest first
    assert [v["files"] for v in listed] == [["a.csv"], ["b.csv"]]
    assert [v["current"] for v in listed] == [False, True]
    assert all(v["first_seen"] and v["in_remote"] and {"git", "remote"} <= set(v["sources"]) for v in listed)
    assert all(v["in_cache"] for v in listed)  # this clone versioned both
    assert [v["rows"] for v in listed] == [None, None]  # no run logged a count; data files are not read
    assert not (root / "mlflow.db").exists()  # listing never creates a tracking store

    table = bitune(root, "data", "versions").stdout  # not a terminal: 80 columns
    assert max(len(line) for line in table.splitlines()) <= 80 and "…" not in table, table
    for v in listed:  # the whole first-seen timestamp, down to the minute, on the version's line
        (line,) = [line for line in table.splitlines() if v["md5"] in line]
        when = datetime.fromisoformat(v["first_seen"]).astimezone().strftime("%Y-%m-%d %H:%M")
        assert f"{v['md5']} {when}    ? " in line, table


def test_failed_checkouts_leave_data_dvc_and_data_exactly_as_they_were(two_versions) -> None:  # type: ignore[no-untyped-def]
    root, b = two_versions["root"], two_versions["b"]
    for bad, expected in (
        ("0" * 32, "not in the DVC remote"),
        ("zz", "no known data version"),
        ("not-an-md5!", "no known data version"),
    ):
        proc = bitune(root, "data", "checkout", bad)
        assert proc.returncode != 0 and expected in proc.stderr, (bad, proc.stderr)
        assert "Traceback" not in proc.stderr + proc.stdout
        assert (root / "data.dvc").read_bytes() == b["dvc_file"]
        assert data_files(root) == b["files"]
    (root / "data" / "b.csv").write_bytes(b"text,label\nmy own edit,positive\n")
    proc = bitune(root, "data", "checkout", two_versions["a"]["md5"])
    assert proc.returncode != 0 and "--force" in proc.stderr  # would discard the edit: refused
    assert (root / "data.dvc").read_bytes() == b["dvc_file"]
    assert (root / "data" / "b.csv").read_bytes().endswith(b"my own edit,positive\n")
    (root / "data" / "b.csv").write_bytes(b["files"]["b.csv"])


def test_checkout_of_a_version_git_records_but_nobody_pushed_says_what_can_be_done(tmp_path: Path) -> None:
    """data.dvc history names a version versioned elsewhere and never pushed: the listing marks it,
    and the checkout says why it cannot be restored and what can be done, not "see the listing"."""
    root = make_project(tmp_path / "project", Path())
    csv = tmp_path / "a.csv"
    make_demo_frame(80, 1).to_csv(csv, index=False)
    version_data_fn(DataParams(source=str(csv)), root)
    current, files = (root / "data.dvc").read_bytes(), data_files(root)
    unpushed = "0123456789abcdef0123456789abcdef.dir"
    (root / "data.dvc").write_text(f"outs:\n- md5: {unpushed}\n  hash: md5\n  path: data\n")
    commit(root, "data versioned on another machine, never pushed")
    (root / "data.dvc").write_bytes(current)
    commit(root, "back to the version here")
    listed = json.loads(bitune(root, "data", "versions", "--json").stdout)
    assert [v["in_remote"] for v in listed if v["md5"] == unpushed] == [False]
    proc = bitune(root, "data", "checkout", unpushed[:8])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr + proc.stdout
    message = " ".join(proc.stderr.split())
    assert (
        f"data version {unpushed} is recorded in git (data.dvc history) but its files are not in the DVC "
        f"remote {(root / '.dvc-storage').resolve()} (never pushed there, or deleted from it since) nor in "
        "the local cache"
    ) in message
    assert (
        "run `dvc push --all-commits` in a clone that has it (the one that versioned it), or pick" in message
    )
    assert (root / "data.dvc").read_bytes() == current and data_files(root) == files


def test_checkout_by_prefix_restores_version_a_byte_for_byte_then_b_again(two_versions) -> None:  # type: ignore[no-untyped-def]
    root, a, b = two_versions["root"], two_versions["a"], two_versions["b"]
    proc = bitune(root, "data", "checkout", a["md5"][:8])
    assert proc.returncode == 0, proc.stderr
    assert data_files(root) == a["files"] == {"a.csv": a["source"]}  # b.csv is gone, a.csv is back
    assert (root / "data.dvc").read_bytes() == a["dvc_file"]  # as `dvc add` wrote it for A
    assert dvc_store.remote_has_current(root)
    proc = bitune(root, "data", "checkout", b["md5"])
    assert proc.returncode == 0, proc.stderr
    assert data_files(root) == b["files"] and (root / "data.dvc").read_bytes() == b["dvc_file"]


def test_checkout_from_the_cache_alone_when_the_remote_is_gone(two_versions) -> None:  # type: ignore[no-untyped-def]
    root, a, b = two_versions["root"], two_versions["a"], two_versions["b"]
    (root / ".dvc-storage").rename(root / ".dvc-storage.away")
    try:
        proc = bitune(root, "data", "checkout", a["md5"])
        assert proc.returncode == 0, proc.stderr
        assert data_files(root) == a["files"]
        proc = bitune(root, "data", "checkout", b["md5"])
        assert proc.returncode == 0 and data_files(root) == b["files"], proc.stderr
    finally:
        (root / ".dvc-storage.away").rename(root / ".dvc-storage")


def test_checkout_from_the_remote_alone_after_the_cache_is_lost(two_versions) -> None:  # type: ignore[no-untyped-def]
    root, a, b = two_versions["root"], two_versions["a"], two_versions["b"]
    subprocess.run(["rm", "-rf", str(root / ".dvc" / "cache")], check=True)
    proc = bitune(root, "data", "checkout", a["md5"])
    assert proc.returncode == 0, proc.stderr
    assert data_files(root) == a["files"]
    proc = bitune(root, "data", "checkout", b["md5"])
    assert proc.returncode == 0 and data_files(root) == b["files"], proc.stderr


def test_failed_push_leaves_data_dvc_and_data_at_the_previous_version(two_versions, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    root, b = two_versions["root"], two_versions["b"]
    csv = tmp_path / "c.csv"
    make_demo_frame(80, 3).to_csv(csv, index=False)
    remote_before = sorted(p.name for p in (root / ".dvc-storage").rglob("*"))
    broken = tmp_path / "broken-remote"
    broken.mkdir()
    (broken / "files").write_text("a file where the remote needs a folder: every push fails")
    with pytest.raises(
        DataError, match="cannot push data version .* data.dvc was left at the previous version"
    ):
        version_data_fn(DataParams(source=str(csv), remote=str(broken)), root)
    assert (root / "data.dvc").read_bytes() == b["dvc_file"]
    assert data_files(root) == b["files"]
    dvc_store.ensure_repo(root, ".dvc-storage")
    assert sorted(p.name for p in (root / ".dvc-storage").rglob("*")) == remote_before
    assert dvc_store.remote_has_current(root)
