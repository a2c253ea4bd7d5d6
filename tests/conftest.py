"""Test session set-up: offline, quiet, and a throwaway Prefect database for the whole session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
# pytest-xdist's workers inherit COLUMNS=80, and rich pins a console created while COLUMNS is set to
# that width; the CLI's console is module-level, so the tests that pass COLUMNS to CliRunner (wide
# tables, unwrapped lines) would see 80 columns. Without it, the console reads COLUMNS at each print.
os.environ.pop("COLUMNS", None)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny test models gain nothing from threads, and on a busy 2-core machine OpenMP spin-waiting makes
# them 25x slower; subprocesses (the CLI under test) inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def prefect_db() -> Iterator[None]:
    """Real Prefect flow runs against a temporary local server and database."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def shared_prefect(prefect_db: None) -> dict[str, str]:
    """`PREFECT_API_URL` of the session's Prefect server (`prefect_db`: one per xdist worker), for a CLI
    subprocess that runs a flow: `env=os.environ | shared_prefect`.

    Without it, each such process (`bitune run`, a `python -c` calling `retrain`) starts Prefect's
    temporary server first: 5-10 s, 15-25 s on a loaded 2-core machine (a new Prefect home's database
    is migrated first). The harness sets the URL only in this process's settings, so a subprocess does
    not inherit it. A run on it is found by its own flow-run id, never by listing the server's runs:
    other tests' runs are there too.

    The temporary server is what a user's `make run` gets, so these runs keep it on purpose:
    - tests/test_crash_resume.py: the `uninterrupted` fixture (a first `bitune run` of a fresh project,
      to the end) and the kill -9 run (its temporary server must die with it);
    - tests/test_run_timeout.py: the Ctrl-C run (SIGINT reaches the temporary server too);
    - tests/test_project_lock.py: the refused run and the one that takes the lock (Prefect never starts).
    """
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    assert url, "prefect_test_harness set no PREFECT_API_URL"
    return {"PREFECT_API_URL": str(url)}


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_models import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), num_layers=4)


def make_project(root: Path, model_dir: Path) -> Path:
    """A fresh project folder like a user's clone: params, git, no data yet."""
    shutil.copytree(REPO / "params", root / "params")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "init"],
        cwd=root,
        check=True,
    )
    return root


def tiny_overrides(model_dir: Path) -> list[str]:
    """Params that make the real flow finish in seconds on a tiny random BERT."""
    return [
        f"model.name_or_path={model_dir}",
        "data.demo_rows=120",
        "strategy.phases.0.epochs=3",
        "strategy.phases.1.epochs=2",
        "strategy.phases.1.train=[embeddings, 'layers[0:2]', head, pooler]",
        "forgetting.probe_rows=16",
    ]


SLOW_MARKERS = ("slow", "production", "browser")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with slow tests first, each module's tests in their own order.

    `make test` runs `pytest -n 2 --dist loadfile`: xdist hands whole modules to its two workers in
    collection order, so a minute-long module collected last runs alone while the other worker idles.
    Slow modules first leaves the short ones to fill both workers at the end.
    """
    slow = {item.path for item in items if any(item.get_closest_marker(m) for m in SLOW_MARKERS)}
    items.sort(key=lambda item: item.path not in slow)  # stable: False (slow) first
