"""The champion as users get it: `models:/bitune-classifier@champion`, in process and over HTTP.

The model is "models from code" with safetensors weights, so it must load and serve with MLflow's
pickle deserialization switched off.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_project, tiny_overrides
from loopback_server import free_port, server_in_own_group, wait_until_up

pytestmark = pytest.mark.slow

CHAMPION_URI = "models:/bitune-classifier@champion"
LABELS = {"negative", "positive"}  # the demo data's labels
TEXTS = ["a great film, i loved the story", "the worst book of the year", "the river city and its history"]
READY_WITHIN_S = 90


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert_dir, prefect_db):  # type: ignore[no-untyped-def]
    from flows.retrain import retrain

    root = make_project(tmp_path_factory.mktemp("serving-project"), tiny_bert_dir)
    summary = retrain(
        params_file="params/default.yaml", overrides=tiny_overrides(tiny_bert_dir), project_dir=str(root)
    )
    assert summary.promoted
    return root, f"sqlite:///{root / 'mlflow.db'}", summary


def check_predictions(out: pd.DataFrame) -> None:
    assert list(out.columns) == ["label", "score", "prob_negative", "prob_positive"]
    assert len(out) == len(TEXTS) and set(out["label"]) <= LABELS
    probs = out[["prob_negative", "prob_positive"]]
    assert probs.sum(axis=1).tolist() == pytest.approx([1.0] * len(TEXTS), abs=1e-5)
    assert out["score"].tolist() == pytest.approx(probs.max(axis=1).tolist())
    assert out["label"].tolist() == [c.removeprefix("prob_") for c in probs.idxmax(axis=1)]


@pytest.fixture(scope="module")
def in_process(project):  # type: ignore[no-untyped-def]
    """The champion loaded by its registry URI, as a user's script would, with pickle loading off."""
    import mlflow

    _, uri, _ = project
    # env, not mlflow.set_*_uri: those also export MLFLOW_TRACKING_URI, which would point every later
    # flow in this session at this project's store
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_REGISTRY_URI", uri)
        env.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
        model = mlflow.pyfunc.load_model(CHAMPION_URI)
    return model


def test_champion_loads_as_pyfunc_and_predicts_labels_and_scores(project, in_process) -> None:  # type: ignore[no-untyped-def]
    root, _, summary = project
    check_predictions(in_process.predict(pd.DataFrame({"text": TEXTS})))
    # it is the model the flow evaluated: same accuracy on the same test split
    (test_file,) = (root / ".bitune" / "prepared").glob("*/test.parquet")
    test = pd.read_parquet(test_file)
    predicted = in_process.predict(test[["text"]])["label"]
    assert (predicted == test["label"]).mean() == pytest.approx(summary.test_metrics["test/accuracy"])


def test_bitune_serve_answers_invocations_like_the_registry_model(project, in_process, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`bitune serve` runs `mlflow models serve` on the champion, from a shell whose PATH lacks the venv
    (MLflow starts `uvicorn` through the shell: the command must put the venv's scripts first itself)."""
    root, _, summary = project
    expected = in_process.predict(pd.DataFrame({"text": TEXTS}))
    port = free_port()
    scripts = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != scripts)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")} | {
        "HF_HUB_OFFLINE": "1",
        "PATH": path or "/usr/bin:/bin",
    }
    log = tmp_path / "serve.log"
    command = [f"{scripts}/bitune", "serve", "--project", str(root), "--port", str(port)]
    with server_in_own_group(command, cwd=tmp_path, env=env, log=log) as proc:
        wait_until_up(f"http://127.0.0.1:{port}/ping", proc, log, "bitune serve", READY_WITHIN_S)
        body = json.dumps({"dataframe_records": [{"text": t} for t in TEXTS]}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = json.loads(response.read())
    served_what = (
        f"version {summary.model_version} (challenger, champion) on http://127.0.0.1:{port}/invocations"
    )
    assert f"Serving bitune-classifier {served_what}" in log.read_text()
    served = pd.DataFrame(payload["predictions"])
    check_predictions(served)
    # the server and the in-process model are the same champion: same answers
    assert served["label"].tolist() == expected["label"].tolist()
    assert served["score"].tolist() == pytest.approx(expected["score"].tolist(), abs=1e-5)


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("7", "error: registry: bitune-classifier has no version 7; `bitune compare` lists"),
        ("latest", "error: serve: version 'latest' is not a version number; `bitune compare` lists"),
    ],
)
def test_bitune_serve_of_a_version_that_is_not_there_is_one_line(
    project, version: str, expected: str
) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["serve", version, "--project", str(project[0])], env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[0].startswith(expected), result.stderr
    assert "Traceback" not in result.output
