"""`bitune ui` for real: the MLflow UI on a project's store, driven by headless Chromium.

The server is started with the exact command `bitune ui` runs (`ui_command`), on loopback. Chromium
comes from the system (`make system-deps`); Playwright's Python package drives it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_project, tiny_overrides
from loopback_server import free_port, server_in_own_group, venv_first_path, wait_until_up
from mlflow.tracking import MlflowClient

from flows.cli_registry import load_settings, ui_command

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
READY_WITHIN_S = 120
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ui(tmp_path_factory, tiny_bert_dir, request) -> Iterator[tuple[str, MlflowClient, object]]:  # type: ignore[no-untyped-def]
    """A project with one flow run, and `bitune ui`'s server on it; yields (url, client, summary)."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: run `make system-deps` (installs chromium for the browser tests)"
        )
    from flows.retrain import retrain

    root = make_project(tmp_path_factory.mktemp("ui-project"), tiny_bert_dir)
    _, settings = load_settings(root, Path("params/default.yaml"))
    port = free_port()
    log = root / "mlflow-ui.log"
    env = os.environ | {"PATH": venv_first_path()}
    url = f"http://127.0.0.1:{port}"
    with server_in_own_group(ui_command(settings, "127.0.0.1", port), cwd=root, env=env, log=log) as proc:
        request.getfixturevalue("prefect_db")  # Prefect's test server starts while MLflow's boots
        # the server has made the store's schema once it answers a query: only then may the flow write to it
        ready = f"{url}/ajax-api/2.0/mlflow/experiments/search?max_results=1"
        wait_until_up(ready, proc, log, "mlflow ui", READY_WITHIN_S)
        summary = retrain(
            params_file="params/default.yaml", overrides=tiny_overrides(tiny_bert_dir), project_dir=str(root)
        )
        yield url, settings.client(), summary


def child_runs(body: str) -> set[str]:
    """Names in the run page's "Child runs" field (empty while it still says loading)."""
    section = body.split("Child runs", 1)[1].split("Source", 1)[0] if "Child runs" in body else ""
    return {name.strip(" ,") for name in section.split()}


def run_page_text(page) -> str:  # type: ignore[no-untyped-def]
    """The run page's text once its lazily loaded "Child runs" field has filled in."""
    deadline = time.monotonic() + 60
    while True:
        body = page.inner_text("body")
        if "loading" not in child_runs(body) or time.monotonic() > deadline:
            return body
        page.wait_for_timeout(500)


def test_mlflow_ui_shows_the_runs_and_their_metrics(ui, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from playwright.sync_api import sync_playwright

    url, client, summary = ui
    parent = client.get_run(summary.run_id)
    experiment_id, run_name = parent.info.experiment_id, parent.info.run_name
    f1 = parent.data.metrics["test/macro_f1"]
    shots = [tmp_path / "experiment.png", tmp_path / "run.png"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{url}/#/experiments/{experiment_id}/runs")
            page.get_by_text(run_name, exact=True).first.wait_for()
            page.screenshot(path=str(shots[0]))

            page.goto(f"{url}/#/experiments/{experiment_id}/runs/{summary.run_id}")
            page.get_by_text("test/macro_f1", exact=True).first.wait_for()
            body = run_page_text(page)
            page.screenshot(path=str(shots[1]), full_page=True)
        finally:
            browser.close()
    # the parent run carries the test scores; its nested phase runs are listed with it
    assert run_name in body and str(f1) in body
    assert "test/accuracy" in body and "test/cka_to_pretrained" in body
    assert child_runs(body) == {"head", "bottom", "evaluate"}
    for shot in shots:
        data = shot.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, shot
