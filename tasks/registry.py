"""Stage 6, registration: log the model, register a version, alias it `challenger`, run the gate.

The champion is scored again on the challenger's test split before the gate compares them, so the
comparison is always on the same data version, and only on the rows the champion has not trained on
(its model folder records them); when some are left out the challenger is scored again on the rest.
Aliases move one at a time and the previous champion is recorded on the new one, so `bitune rollback`
can restore it; the registry is never left without a champion or with two, and every move is kept
(`tasks.champion_moves`).

The model is an MLflow 3 logged model of the parent run (the experiment's Models tab), with the test
scores on its page, and each version's source is `models:/<model_id>`. Versions registered before
were a folder of the run's artifacts (source `<run artifact uri>/model`): everything that reads a
version goes through `get_model_version_download_uri`, which serves both.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import mlflow
import pandas as pd
import torch
from mlflow.entities import LoggedModel, LoggedModelOutput
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature
from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS
from prefect import task

import bitune
from bitune.champion_moves import REGISTRATION
from bitune.data.prepared import PreparedData
from bitune.data.seen import split_digest
from bitune.errors import TrackingError
from bitune.evaluation.rescore import challenger_metrics, score_test_rows
from bitune.evaluation.unseen import gate_rows
from bitune.model.classifier import load_classifier, load_seen_text_keys
from bitune.params import Params, RegistryParams
from bitune.promotion import CKA, ChampionOnTest, GateDecision, decide_at_registration, registration_text
from tasks import tracking
from tasks.champion_moves import RUN_NOTE, move_champion
from tasks.evaluate import Evaluation
from tasks.promotion import DATA_VERSION, TEST_SPLIT, download_classifier, get_champion
from tasks.tracking import TrackingSettings, signals_held, source_tags

CHALLENGER = "challenger"
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


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    promoted: bool
    reasons: list[str]
    champion_version: str | None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


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

    if uri.startswith(("http://", "https://")) or mlflow.get_tracking_uri() == uri:
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


def champion_metrics(
    settings: TrackingSettings, name: str, params: Params, prepared: PreparedData
) -> ChampionOnTest:
    """The champion's version and its scores on the rows of *this* run's test split it has not seen.

    No version only when the registry says there is no champion; any other failure to read the
    alias (no permission, server error, locked store) stops the run: promoting on it would replace
    a champion the gate never saw, with no `bitune.previous_champion` to roll back to.
    """
    client = settings.client()
    try:
        champion = get_champion(client, name)
    except MlflowException as exc:
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise TrackingError(
            f"registry: cannot read the champion of {name} from MLflow at {settings.uri} ({first}); "
            "nothing was registered and the champion is unchanged"
        ) from None
    if champion is None:
        return ChampionOnTest()
    champion_version = str(champion.version)
    with tempfile.TemporaryDirectory() as tmp:
        classifier_dir = download_classifier(settings, name, champion_version, Path(tmp))
        loaded = load_classifier(classifier_dir)
        if sorted(loaded[2].labels) != sorted(prepared.labels):
            return ChampionOnTest(champion_version)
        # the text, not the challenger's token ids: the champion may use another vocabulary and length
        test = pd.read_parquet(prepared.split_file("test"))
        rows = gate_rows(test["text"].tolist(), test["label"].tolist(), load_seen_text_keys(classifier_dir))
        if rows.blocker(params.registry.metric) is not None:
            return ChampionOnTest(champion_version, None, rows)
        scores = score_test_rows(loaded, test[rows.keep], params)
    stored = client.get_run(champion.run_id).data.metrics if champion.run_id else {}
    if CKA in stored:
        scores[CKA] = stored[CKA]
    return ChampionOnTest(champion_version, scores, rows)


def set_champion(
    settings: TrackingSettings,
    name: str,
    version: str,
    previous: str | None,
    reason: str,
    run_id: str | None = None,
) -> None:
    """The gate's promotion: `champion` to `version` in one alias write, the previous one kept for
    rollback and the move in the champion history."""
    move_champion(settings.client(), name, str(version), previous, REGISTRATION, reason, run_id)


def describe(
    settings: TrackingSettings,
    run_id: str,
    name: str,
    version: str,
    decision: GateDecision,
    evaluation: Evaluation,
    data_md5: str,
) -> None:
    """The registration on both sides: the version's description, the run's description, and the
    version in the run's name, which repeated across reruns of one strategy on one data version."""
    client = settings.client()
    text = registration_text(name, version, decision, evaluation.metrics, data_md5)
    client.update_model_version(name, version, description=text)
    client.set_tag(run_id, RUN_NOTE, f"{text}\n\nModel: `models:/{name}/{version}`")
    run_name = client.get_run(run_id).info.run_name
    if run_name:
        client.update_run(run_id, name=f"{run_name}-v{version}")


def register_fn(
    params: Params,
    prepared: PreparedData,
    evaluation: Evaluation,
    model_dir: str,
    data_md5: str,
    settings: TrackingSettings,
    parent_run_id: str,
) -> Registration:
    rules: RegistryParams = params.registry
    client = settings.client()
    test = pd.read_parquet(prepared.split_file("test"))
    texts = test["text"].tolist()
    identity = {
        DATA_VERSION: data_md5,
        TEST_SPLIT: split_digest(texts, test["label"].tolist()),
        "bitune.strategy": params.strategy.name,
        "bitune.params_digest": params.digest(),
    }
    try:
        # the parent run carries the test scores too, for MLflow's compare view and `bitune compare`
        logged = log_model(settings, parent_run_id, Path(model_dir), texts, identity, evaluation.metrics)
        source = f"models:/{logged.model_id}"
        try:
            client.create_registered_model(rules.model_name, description="Text classifier trained by bitune")
        except MlflowException:
            pass  # already registered
        champion = champion_metrics(settings, rules.model_name, params, prepared)
        with process_tracking_uri(settings.uri):
            mv = client.create_model_version(
                rules.model_name,
                source=source,
                run_id=parent_run_id,
                tags={**identity, "bitune.source": source},
                model_id=logged.model_id,
            )
        link_version_to_model(settings, logged.model_id, rules.model_name, str(mv.version))
        client.set_registered_model_alias(rules.model_name, CHALLENGER, mv.version)
        decision = decide_at_registration(
            evaluation.metrics,
            champion,
            rules,
            str(mv.version),
            lambda rows: challenger_metrics(evaluation.metrics, Path(model_dir), params, prepared, rows),
        )
        for key, value in evaluation.metrics.items():
            if key in (rules.metric, "test/accuracy", "test/macro_f1", CKA):
                client.set_model_version_tag(rules.model_name, mv.version, key, f"{value:.6f}")
        for key, tag in (champion.rows.tags() if champion.rows else {}).items():
            client.set_model_version_tag(rules.model_name, mv.version, key, tag)
        client.set_model_version_tag(rules.model_name, mv.version, "bitune.gate", decision.summary()[:5000])
        describe(settings, parent_run_id, rules.model_name, str(mv.version), decision, evaluation, data_md5)
        if decision.promote:
            set_champion(
                settings, rules.model_name, mv.version, champion.version, decision.summary(), parent_run_id
            )
        client.set_tag(parent_run_id, "bitune.model_version", mv.version)
        client.set_tag(parent_run_id, "bitune.gate", decision.summary()[:5000])
    except MlflowException as exc:
        raise TrackingError(
            f"registry: MLflow refused ({str(exc).splitlines()[0][:160]}); the champion is unchanged"
        ) from None
    version = str(mv.version)
    return Registration(
        rules.model_name,
        version,
        decision.promote,
        decision.reasons,
        version if decision.promote else champion.version,
    )


# the task is the plain function as is: references in, references out, nothing to convert
register = task(name="register-model")(register_fn)
