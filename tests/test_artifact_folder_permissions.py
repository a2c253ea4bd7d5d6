"""An experiment's artifact folder that its user may not write into: refused, as a user sees it.

Root may write into a folder of mode 555, and this suite usually runs as root, where that branch of
`check_artifact_folder` never runs. So the check runs in a subprocess as an unprivileged user
(`nobody`, through util-linux's `setpriv`) when the suite is root, and as the suite's own user
otherwise, against folders that user cannot write.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

NOBODY = 65534
CHECK = """
import sys
from bitune.errors import TrackingError
from tasks.tracking import TrackingSettings, check_artifact_folder

settings = TrackingSettings(uri=sys.argv[1], experiment="bitune", artifact_location=None)
try:
    check_artifact_folder(settings)
except TrackingError as exc:
    print(exc)
else:
    print("passed")
"""


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder the unprivileged user can reach (pytest's tmp_path is root's alone, mode 700)."""
    base = Path(tempfile.mkdtemp(prefix="bitune-perm-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    for path in [base, *base.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)  # so the clean-up may empty it
    shutil.rmtree(base)


def as_user_who_cannot_override(root: Path, uri: str) -> str:
    """Run the check as a user without root's override of file modes; its one output line."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to run this check as an unprivileged user"
        prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        for path in [root, *root.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)  # the project is that user's; only the modes deny
    env = {**os.environ, "HOME": str(root)}
    done = subprocess.run(
        [*prefix, sys.executable, "-c", CHECK, uri], cwd=root, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


def experiment_with_artifacts_in(root: Path, folder: Path) -> str:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).create_experiment("bitune", artifact_location=folder.as_uri())
    return uri


def test_a_read_only_artifact_folder_is_refused_for_a_user_who_cannot_write_it(shared_tmp: Path) -> None:
    folder = shared_tmp / "artifacts"
    folder.mkdir()
    uri = experiment_with_artifacts_in(shared_tmp, folder)
    assert as_user_who_cannot_override(shared_tmp, uri) == "passed"  # writable: the same user passes

    folder.chmod(0o555)
    assert as_user_who_cannot_override(shared_tmp, uri) == (
        f"tracking.experiment: experiment 'bitune' keeps its artifacts in {folder}, where they cannot be "
        f"written (no permission to write in {folder}); make that folder writable, or set "
        "tracking.experiment to a new experiment name"
    )


def test_a_folder_not_made_yet_is_judged_by_the_first_folder_above_it(shared_tmp: Path) -> None:
    locked = shared_tmp / "locked"
    locked.mkdir()
    uri = experiment_with_artifacts_in(shared_tmp, locked / "later" / "artifacts")
    locked.chmod(0o555)
    assert as_user_who_cannot_override(shared_tmp, uri).endswith(
        f"(no permission to write in {locked}); make that folder writable, or set tracking.experiment "
        "to a new experiment name"
    )
    assert not (locked / "later").exists()  # the check creates nothing
