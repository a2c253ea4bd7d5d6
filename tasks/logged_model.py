"""The trained classifier as an MLflow 3 logged model of the parent run (the experiment's Models tab).

Its files are an MLflow pyfunc ("models from code", `tasks/serving/pyfunc_model.py`, safetensors
weights, pinned requirements), the test scores are on its page, and a registered version's source is
`models:/<model_id>`. Versions registered before were a folder of the run's artifacts (source
`<run artifact uri>/model`): everything that reads a version goes through
`get_model_version_download_uri`, which serves both.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from importlib.metadata import version
from pathlib import Path

import mlflow
import pandas as pd
import torch
from mlflow.entities import LoggedModel, LoggedModelOutput
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

import bitune
from bitune.model.classifier import load_classifier
from tasks import tracking
from tasks.tracking import TrackingSettings, is_server_uri, signals_held, source_tags

MODEL_TYPE = "bitune-text-classifier"  # the logged model's type: the Models tab can filter on it
MODEL_CODE = Path(__file__).parent / "serving" / "pyfunc_model.py"
SERVING_REQUIREMENTS = (
    "mlflow",
    "torch",
    "transformers",
    "safetensors",
    "pandas",
    "pydantic",
    "pyyaml",
    "accelerate",
)


def pip_requirements() -> list[str]:
    """Exact versions of what the served model imports (offline, mlflow cannot infer them).

    Without a local version label: PyTorch's own wheels call themselves `2.13.0+cpu` or `+cu128`, a
    version no package index but PyTorch's serves, so `torch==2.13.0+cpu` made the model's
    environment (`mlflow models serve --env-manager uv`, `build-docker`) impossible to install.
    """
    names = {"pyyaml": "PyYAML"}
    return [f"{n}=={public_version(version(names.get(n, n)))}" for n in SERVING_REQUIREMENTS]


def public_version(installed: str) -> str:
    """`2.13.0+cpu` -> `2.13.0`: the release any index serves (PEP 440's public version)."""
    return installed.partition("+")[0]


def save_pyfunc(
    target: Path, model_dir: Path, example_texts: list[str], mlflow_model: Model | None = None
) -> None:
    """The classifier as an MLflow pyfunc folder at `target` ("models from code", safetensors weights),
    with its signature, an input example and pinned requirements; `mlflow_model` carries the logged
    model's ids into its MLmodel file."""
    example = pd.DataFrame({"text": example_texts[:3]})
    model, tokenizer, meta = load_classifier(model_dir)
    enc = tokenizer(example["text"].tolist(), truncation=True, padding=True, return_tensors="pt")
    with torch.inference_mode():
        probs = torch.softmax(model(enc["input_ids"], enc["attention_mask"]), -1)
    output = pd.DataFrame(
        {
            "label": [meta.labels[i] for i in probs.argmax(-1).tolist()],
            "score": probs.max(-1).values.tolist(),
        }
    )
    for j, label in enumerate(meta.labels):
        output[f"prob_{label}"] = probs[:, j].tolist()
    pyfunc_log = logging.getLogger("mlflow.pyfunc")
    level = pyfunc_log.level
    pyfunc_log.setLevel(logging.WARNING)  # its "Validating input example" INFO line on every run
    try:
        mlflow.pyfunc.save_model(
            path=str(target),
            python_model=str(MODEL_CODE),
            artifacts={"classifier": str(model_dir)},
            code_paths=[str(Path(bitune.__file__).parent)],
            pip_requirements=pip_requirements(),
            signature=infer_signature(example, output),
            input_example=example,
            mlflow_model=mlflow_model,
        )
    finally:
        pyfunc_log.setLevel(level)


def logged_model_name(run_name: str | None) -> str:
    """The parent run's name (strategy and data version) as a logged model name, which MLflow allows
    no `/ : . % " '` in."""
    name = "".join("-" if c in "/:.%\"'" else c for c in (run_name or "").strip())
    return name or "model"


def log_model(
    settings: TrackingSettings,
    run_id: str,
    model_dir: Path,
    example_texts: list[str],
    tags: dict[str, str] | None = None,
    metrics: dict[str, float] | None = None,
) -> LoggedModel:
    """The classifier as an MLflow 3 logged model of run `run_id`: READY once its files are uploaded,
    FAILED if they are not. Its params are the run's (as `mlflow.pyfunc.log_model` copies them), the
    run lists it as an output, and `metrics` are logged to the run with its id, so the model's page and
    the experiment's Models tab show them. Client calls only: thread-safe, no active run needed."""
    client = settings.client()
    run = client.get_run(run_id)
    logged = client.create_logged_model(
        run.info.experiment_id,
        name=logged_model_name(run.info.run_name),
        source_run_id=run_id,
        tags={**source_tags(), **(tags or {})},
        params=dict(run.data.params),
        model_type=MODEL_TYPE,
    )
    try:
        with signals_held():
            client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        # on the run (MLflow's compare view, `bitune compare`) and on the logged model
        tracking.log_metrics(settings, run_id, metrics or {}, model_id=logged.model_id)
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / "model"
            ids = Model(
                artifact_path=logged.artifact_location,
                model_uuid=logged.model_id,
                run_id=run_id,
                model_id=logged.model_id,
            )
            save_pyfunc(target, model_dir, example_texts, ids)
            client.log_model_artifacts(logged.model_id, str(target))
    except BaseException:
        with suppress(MlflowException):  # the upload's own error is the one to report
            client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    with signals_held():
        return client.finalize_logged_model(logged.model_id, "READY")


_PROCESS_URI = threading.Lock()


@contextmanager
def process_tracking_uri(uri: str) -> Iterator[None]:
    """The process-wide tracking URI pointed at `uri` for the duration, when the store is a local one.

    MLflow's SQL registry looks up a `models:/<model_id>` source through `MlflowClient()`, the process's
    tracking URI, not the calling client's (a TODO in `mlflow/store/model_registry/sqlalchemy_store.py`):
    from any folder but the project it found no such model, in an empty `mlflow.db` it created there.
    A tracking server resolves the source against its own store and needs nothing. Restored after,
    environment variable included; bitune itself never reads the process-wide URI.
    """
    from mlflow.tracking._tracking_service import utils as tracking_utils

    if is_server_uri(uri) or mlflow.get_tracking_uri() == uri:
        yield
        return
    with _PROCESS_URI:
        explicit = tracking_utils._tracking_uri
        env = os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(explicit)  # type: ignore[arg-type]  # None: back to env / default
            if env is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = env


def link_version_to_model(settings: TrackingSettings, model_id: str, name: str, version: str) -> None:
    """The logged model's `mlflow.modelVersions` tag, which its page reads to list the registered
    versions; `mlflow.register_model` writes it client-side, a tracking server on its own."""
    client = settings.client()
    current = client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS)
    listed = json.loads(current) if current else []
    entry = {"name": name, "version": str(version)}
    if entry not in [{"name": e.get("name"), "version": str(e.get("version"))} for e in listed]:
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps([*listed, entry])})
