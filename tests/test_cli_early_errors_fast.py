"""Bad params and bad data files fail before `bitune run` imports torch and transformers.

Those imports take 4–6 s on a 2-core machine; the checks that catch a misspelt `--set` key or a
missing column need neither, so a user waits about a second for the error, not seven.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, make_project

# runs the console script's app in-process, then reports its exit code and whether torch was imported
PROBE = """
import sys
from flows.cli import app
try:
    app(sys.argv[1:])
except SystemExit as exc:
    print("exit", exc.code, "torch" in sys.modules, "transformers" in sys.modules)
"""


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--set", "train.bogus=1"], "train.bogus: unknown key"),
        (["--data", "{project}/reviews.csv"], "reviews.csv: no column 'text'"),
    ],
)
def test_params_and_data_errors_come_before_torch_is_imported(
    tmp_path: Path, args: list[str], said: str
) -> None:
    project = make_project(tmp_path / "project", tmp_path)
    (project / "reviews.csv").write_text("review,stars\ngood,1\n")  # no text/label columns
    argv = ["run", "--project", str(project), *(a.format(project=project) for a in args)]
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PREFECT_API_URL": "http://127.0.0.1:9/api"},
    )
    assert done.stdout.strip().splitlines()[-1] == "exit 2 False False", done.stdout + done.stderr
    assert said in done.stderr
