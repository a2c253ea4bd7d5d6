"""A hub id to download with no network fails in seconds, in one line.

A README audit ran `bitune run --set model.name_or_path=bert-base-uncased` without a network: forty
lines of huggingface_hub retry warnings over a minute came before the one-line error. HF_HUB_OFFLINE
is unset here, as for users; HF_ENDPOINT points at a closed loopback port, so no network is needed
for the test to mean the same everywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import make_project
from loopback_server import free_port

BITUNE = Path(sys.executable).parent / "bitune"
MODEL = "nobody/not-a-model"


def unreachable_hub_env(tmp_path: Path) -> tuple[dict[str, str], str]:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env |= {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf-home")}  # an empty cache
    return env, endpoint


def test_bitune_run_with_an_unreachable_hub_is_one_line_within_seconds(tmp_path: Path) -> None:
    root = make_project(tmp_path / "project", Path())
    env, endpoint = unreachable_hub_env(tmp_path)
    started = time.monotonic()
    proc = subprocess.run(
        [str(BITUNE), "run", "--set", f"model.name_or_path={MODEL}"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    took = time.monotonic() - started
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) <= 2, proc.stderr[-3000:]  # the error and its `(details in ...)`
    assert lines[0].startswith(
        f"error: model.name_or_path: '{MODEL}' is not in the local Hugging Face cache and {endpoint} cannot "
        "be reached to download it ("
    ), lines[0]
    assert "Retrying" not in proc.stdout + proc.stderr
    assert took < 20, f"took {took:.0f} s"
    assert not (root / "data.dvc").exists()  # refused before the data step


def test_the_preflight_model_check_fails_fast_too(tmp_path: Path) -> None:
    """A scheduled run has no CLI before it: the flow's preflight check does the same."""
    env, endpoint = unreachable_hub_env(tmp_path)
    script = (
        "import time\n"
        "from bitune.errors import ModelError\n"
        "from bitune.params import ModelParams\n"
        "from tasks.preprocess import check_model\n"
        "started = time.monotonic()\n"
        "try:\n"
        f"    check_model(ModelParams(name_or_path={MODEL!r}))\n"
        "except ModelError as exc:\n"
        "    print(exc)\n"
        "print(f'took {time.monotonic() - started:.1f}')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"and {endpoint} cannot be reached to download it" in proc.stdout, proc.stdout + proc.stderr
    assert "Retrying" not in proc.stdout + proc.stderr
    # the check alone, not the ~10 s of importing torch on a busy machine: the retries took over a minute
    took = float(proc.stdout.rsplit("took ", 1)[1])
    assert took < 10, f"took {took:.0f} s"
