"""`bitune data checkout` and the DVC store never lose or corrupt data/, on real git + DVC projects.

Each test starts from a copy of one project holding versions A (a.csv) and B (b.csv), both committed
and pushed to a local DVC remote, with B current; each breaks it the way a user or a teammate did.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, make_project

from bitune.data.demo import make_demo_frame
from bitune.errors import DataError
from bitune.params import DataParams
from bitune.project_lock import hold_project
from tasks import dvc_store
from tasks.data import version_data_fn

pytestmark = pytest.mark.slow

REMOTE = ".dvc-storage"


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
    folder = root / "data"
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def commit(root: Path, message: str) -> None:
    subprocess.run(["git", "add", "data.dvc"], cwd=root, check=True)
    subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", message],
        cwd=root,
        check=True,
    )


def object_path(store: Path, md5: str) -> Path:
    return store / "files" / "md5" / md5[:2] / md5[2:]


def file_md5(root: Path, version: str) -> str:
    """The md5 of the one file of `version`, from its manifest in the remote."""
    import json

    (entry,) = json.loads(object_path(root / REMOTE, version).read_text())
    return str(entry["md5"])


def overwrite(path: Path, content: bytes) -> None:
    path.chmod(0o644)  # DVC keeps cache and remote objects read-only
    path.write_bytes(content)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = make_project(tmp_path_factory.mktemp("template") / "project", Path())
    sources = tmp_path_factory.mktemp("sources")
    out: dict[str, object] = {}
    for name, seed in (("a", 1), ("b", 2)):
        csv = sources / f"{name}.csv"
        make_demo_frame(60, seed).to_csv(csv, index=False)
        out[name] = version_data_fn(DataParams(source=str(csv)), root).md5
        out[f"{name}_files"] = data_files(root)
        commit(root, f"data {name}")
    out["root"] = root
    return out


@pytest.fixture
def project(template: dict[str, object], tmp_path: Path) -> Path:
    """A copy of the template project, its remote and cache its own (config.local re-pointed)."""
    root = tmp_path / "project"
    shutil.copytree(template["root"], root, symlinks=True)  # type: ignore[arg-type]
    dvc_store.ensure_repo(root, REMOTE)
    return root


def state(root: Path) -> dict[str, object]:
    return {
        "data.dvc": (root / "data.dvc").read_bytes(),
        "data": data_files(root),
        "cache": sorted(files_under(dvc_store.cache_dir(root))),
        "top_level": sorted(p.name for p in root.iterdir() if p.name != ".bitune"),
    }


def test_edits_are_kept_when_data_dvc_names_a_version_the_cache_lacks(project: Path, template) -> None:  # type: ignore[no-untyped-def]
    """After `git pull` brings a teammate's data.dvc (C: in the remote, not in this cache) DVC calls
    data/ "not in cache", not "modified": the edits in data/ are still refused a checkout."""
    csv = project.parent / "c.csv"
    make_demo_frame(60, 3).to_csv(csv, index=False)
    c = version_data_fn(DataParams(source=str(csv)), project).md5
    c_dvc = (project / "data.dvc").read_bytes()
    shutil.rmtree(project / ".dvc" / "cache")  # C came from the teammate: only the remote has it
    shutil.rmtree(project / "data")
    (project / "data").mkdir()
    (project / "data" / "b.csv").write_bytes(template["b_files"]["b.csv"] + b"my own row,positive\n")
    before = state(project)

    with pytest.raises(DataError) as refused:
        dvc_store.checkout(project, template["a"])
    message = str(refused.value)
    assert "\n" not in message and "data/ holds edits that no data version records" in message
    assert f"data.dvc records {c}" in message and "--force" in message
    assert state(project) == before  # the edit, data.dvc and the cache: all as they were

    (project / "data" / "b.csv").write_bytes(template["b_files"]["b.csv"])  # data/ is B again: no edit
    assert dvc_store.checkout(project, c) == c  # fetched from the remote, no --force needed
    assert (project / "data.dvc").read_bytes() == c_dvc and data_files(project) == {"c.csv": csv.read_bytes()}


def test_a_failed_checkout_of_a_version_nobody_has_leaves_data_in_place(project: Path) -> None:
    """data.dvc set by hand to a version that exists nowhere: checking it out fails and loses nothing."""
    missing = "0" * 32 + ".dir"
    (project / "data.dvc").write_text(f"outs:\n- md5: {missing}\n  hash: md5\n  path: data\n")
    before = state(project)
    proc = bitune(project, "data", "checkout", missing.removesuffix(".dir"))
    assert proc.returncode == 2 and "not in the DVC remote" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert state(project) == before
    assert before["data"]  # data/ was there, and still is


def test_a_corrupt_object_in_the_remote_is_refused_naming_the_file(project: Path, template) -> None:  # type: ignore[no-untyped-def]
    """The remote's copy of a.csv no longer hashes to its md5: checkout and diff both refuse it, the
    checkout leaves data/ at B, and the bad copy is not left in the cache for DVC to trust later."""
    a, b = template["a"], template["b"]
    md5 = file_md5(project, a)
    shutil.rmtree(project / ".dvc" / "cache")  # only the remote has A
    good = template["a_files"]["a.csv"]
    overwrite(object_path(project / REMOTE, md5), good.replace(b"positive", b"negative", 1))
    actual = hashlib.md5(good.replace(b"positive", b"negative", 1)).hexdigest()
    before = {"data.dvc": (project / "data.dvc").read_bytes(), "data": data_files(project)}

    with pytest.raises(DataError) as refused:
        dvc_store.checkout(project, a)
    message = str(refused.value)
    assert "\n" not in message
    assert f"a.csv from the DVC remote has md5 {actual}, not {md5}" in message
    assert "the remote's copy is corrupt" in message and "push the version again" in message
    assert {"data.dvc": (project / "data.dvc").read_bytes(), "data": data_files(project)} == before
    assert not object_path(dvc_store.cache_dir(project), md5).exists()

    proc = bitune(project, "data", "diff", a, b)
    assert proc.returncode == 2 and f"has md5 {actual}, not {md5}" in " ".join(proc.stderr.split())
    assert {"data.dvc": (project / "data.dvc").read_bytes(), "data": data_files(project)} == before


def test_a_corrupt_copy_in_the_local_cache_is_fetched_again(project: Path, template) -> None:  # type: ignore[no-untyped-def]
    a = template["a"]
    cached = object_path(dvc_store.cache_dir(project), file_md5(project, a))
    overwrite(cached, b"text,label\nnot the bytes of a.csv,positive\n")
    assert dvc_store.checkout(project, a) == a
    assert data_files(project) == template["a_files"]
    assert cached.read_bytes() == template["a_files"]["a.csv"]


def test_a_push_that_fails_for_a_missing_plugin_leaves_data_as_it_was(project: Path, template) -> None:  # type: ignore[no-untyped-def]
    """A gs:// remote without dvc-gs: the push fails, and so would DVC's own restore of data/."""
    csv = project.parent / "c.csv"
    make_demo_frame(60, 3).to_csv(csv, index=False)
    before = state(project)
    remote_setting = (project / ".dvc" / "config.local").read_bytes()
    with pytest.raises(DataError, match="cannot push data version"):
        version_data_fn(DataParams(source=str(csv), remote="gs://bucket/path"), project)
    after = state(project)
    assert after["data.dvc"] == before["data.dvc"] and after["data"] == before["data"] == template["b_files"]
    # and `dvc push` / `dvc pull` by hand still go to the remote the data is in, not to gs://
    assert (project / ".dvc" / "config.local").read_bytes() == remote_setting

    # edits in data/ that a run was versioning (data.source=data) stay as they were, not reset
    (project / "data" / "b.csv").write_bytes(template["b_files"]["b.csv"] + b"my own row,positive\n")
    edited = state(project)
    with pytest.raises(DataError, match="cannot push data version"):
        version_data_fn(DataParams(source="data", remote="gs://bucket/path"), project)
    assert state(project)["data"] == edited["data"]
    assert (project / "data.dvc").read_bytes() == edited["data.dvc"]
    assert not [p.name for p in project.iterdir() if "bitune-" in p.name]  # no copy kept aside is left


def test_a_checkout_during_a_run_is_refused_as_a_second_run_is(project: Path, template) -> None:  # type: ignore[no-untyped-def]
    before = state(project)
    with hold_project(project):  # this test process is the run in progress
        proc = bitune(project, "data", "checkout", template["a"])
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[0].startswith("error: ")
    assert "another retrain of this project is running" in proc.stderr
    assert state(project) == before
    proc = bitune(project, "data", "checkout", template["a"])  # the run has ended: it goes ahead
    assert proc.returncode == 0 and data_files(project) == template["a_files"], proc.stderr
