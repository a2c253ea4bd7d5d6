"""Loading the served model prints no MLflow warning: every `bitune run` and `bitune serve` loads it."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_the_model_class_loads_without_mlflows_type_hint_warning() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import tasks.serving.pyfunc_model"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Add type hints" not in done.stderr, done.stderr[-2000:]
