"""Stage 6, registration: log the model, register a version, alias it `challenger`, run the gate.

The champion is scored again on the challenger's test split before the gate compares them, so the
comparison is always on the same data version, and only on the rows the champion has not trained on
(its model folder records them); when some are left out the challenger is scored again on the rest.
Aliases move one at a time and the previous champion is recorded on the new one, so `bitune rollback`
can restore it; the registry is never left without a champion or with two.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import mlflow
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from prefect import task
from transformers import PreTrainedTokenizerBase

import bitune
from bitune.data.seen import split_digest
from bitune.device import make_accelerator
from bitune.errors import TrackingError
from bitune.evaluation.metrics import named_metrics
from bitune.evaluation.rescore import label_ids, score_texts
from bitune.evaluation.unseen import GateRows, gate_rows
from bitune.model.classifier import BituneClassifier, ClassifierMeta, load_classifier, load_seen_text_keys
from bitune.model.layer_groups import resolve_layer_groups
from bitune.params import Params, RegistryParams
from bitune.promotion import CKA, GateDecision, decide
from bitune.tuning.phase import PhaseContext
from tasks.evaluate import Evaluation
from tasks.preprocess import PreparedData
from tasks.promotion import DATA_VERSION, TEST_SPLIT, download_classifier, get_champion
from tasks.tracking import TrackingSettings, log_metrics

CHAMPION, CHALLENGER = "champion", "challenger"
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


def log_model(settings: TrackingSettings, run_id: str, model_dir: Path, example_texts: list[str]) -> str:
    """Save the pyfunc locally and upload it to the run: thread-safe, no active run needed."""
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "model"
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
            )
        finally:
            pyfunc_log.setLevel(level)
        settings.client().log_artifacts(run_id, str(target), "model")
    return f"runs:/{run_id}/model"


@dataclass(frozen=True)
class ChampionOnTest:
    """The champion as the gate sees it on this run's test split."""

    version: str | None = None  # None: the registry has no champion yet
    scores: dict[str, float] | None = None  # None: not scored (other labels, or no unseen rows to score)
    rows: GateRows | None = None  # which test rows it is compared on; None when labels differ


def score_test_rows(
    loaded: tuple[BituneClassifier, PreTrainedTokenizerBase, ClassifierMeta],
    test: pd.DataFrame,
    params: Params,
    progress: bool = True,
) -> dict[str, float]:
    """A saved model's test scores on `test`'s text, encoded with its own settings: the one code path
    for both sides of the gate whenever it compares on a subset of the rows (and of `bitune promote`'s
    re-score, which keeps the terminal to its own lines: `progress` False)."""
    model, tokenizer, meta = loaded
    ctx = PhaseContext(
        accelerator=make_accelerator(params.train),
        groups=resolve_layer_groups(model.backbone),
        pretrained={},  # inference only: nothing is anchored
        eval_batch_size=params.train.eval_batch_size,
        progress=progress,
    )
    logits = score_texts(model, tokenizer, meta, test["text"].tolist(), ctx)
    return named_metrics(logits, label_ids(meta, test["label"].tolist()), meta.labels)


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


def challenger_metrics(
    evaluation: Evaluation, model_dir: Path, params: Params, prepared: PreparedData, rows: GateRows
) -> dict[str, float]:
    """The challenger's scores on the rows the champion is compared on: its evaluation when that is
    all of them, else a re-score of the same rows through the champion's code path."""
    if not rows.excluded:
        return evaluation.metrics
    test = pd.read_parquet(prepared.split_file("test"))
    scores = score_test_rows(load_classifier(model_dir), test[rows.keep], params)
    if CKA in evaluation.metrics:  # measured on the probe texts, not the test rows
        scores[CKA] = evaluation.metrics[CKA]
    return scores


def gate(
    evaluation: Evaluation,
    model_dir: Path,
    params: Params,
    prepared: PreparedData,
    champion: ChampionOnTest,
    challenger_version: str,
) -> GateDecision:
    """The gate's decision, with both models scored on the same rows, none of them seen by the champion."""
    rules = params.registry
    if champion.version is None:
        return decide(evaluation.metrics, None, rules)
    if champion.rows is None:
        return GateDecision(False, ["champion has a different label set; promote manually with --force"])
    problem = champion.rows.problem(rules.metric, challenger_version)
    if problem is not None or champion.scores is None:
        return GateDecision(False, [problem or "the champion could not be scored"])
    challenger = challenger_metrics(evaluation, model_dir, params, prepared, champion.rows)
    return champion.rows.annotate(decide(challenger, champion.scores, rules))


def set_champion(
    settings: TrackingSettings, name: str, version: str, previous: str | None, reason: str
) -> None:
    """Move `champion` to `version` in one alias write; remember the previous one for rollback."""
    client = settings.client()
    if previous:
        client.set_model_version_tag(name, version, "bitune.previous_champion", previous)
    client.set_model_version_tag(name, version, "bitune.promotion", reason[:5000])
    client.set_registered_model_alias(name, CHAMPION, version)


SHOWN_SCORES = ("test/accuracy", "test/macro_f1", "test/ece", "test/loss", CKA)
RUN_NOTE = "mlflow.note.content"  # the run page's Description


def registration_text(
    name: str, version: str, decision: GateDecision, metrics: dict[str, float], data_md5: str
) -> str:
    """The gate's decision and the test scores in Markdown: what the run page and the model version
    page show first, instead of a tag among dozens."""
    outcome = "promoted to **champion**" if decision.promote else "kept as **challenger**"
    scores = [f"| {key} | {metrics[key]:.4f} |" for key in SHOWN_SCORES if key in metrics]
    return "\n".join(
        [
            f"{name} version {version}, {outcome} at registration (data version `{data_md5}`).",
            "",
            f"Gate: {'; '.join(decision.reasons)}",
            "",
            "| test score | value |",
            "|---|---|",
            *scores,
        ]
    )[:5000]


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
    try:
        # the parent run carries the test scores too, for MLflow's compare view and `bitune compare`
        log_metrics(settings, parent_run_id, evaluation.metrics)
        source = log_model(settings, parent_run_id, Path(model_dir), texts)
        try:
            client.create_registered_model(rules.model_name, description="Text classifier trained by bitune")
        except MlflowException:
            pass  # already registered
        champion = champion_metrics(settings, rules.model_name, params, prepared)
        mv = client.create_model_version(
            rules.model_name,
            source=f"{client.get_run(parent_run_id).info.artifact_uri}/model",
            run_id=parent_run_id,
            tags={
                DATA_VERSION: data_md5,
                TEST_SPLIT: split_digest(texts, test["label"].tolist()),
                "bitune.strategy": params.strategy.name,
                "bitune.params_digest": params.digest(),
                "bitune.source": source,
            },
        )
        client.set_registered_model_alias(rules.model_name, CHALLENGER, mv.version)
        decision = gate(evaluation, Path(model_dir), params, prepared, champion, str(mv.version))
        for key, value in evaluation.metrics.items():
            if key in (rules.metric, "test/accuracy", "test/macro_f1", CKA):
                client.set_model_version_tag(rules.model_name, mv.version, key, f"{value:.6f}")
        for key, tag in (champion.rows.tags() if champion.rows else {}).items():
            client.set_model_version_tag(rules.model_name, mv.version, key, tag)
        client.set_model_version_tag(rules.model_name, mv.version, "bitune.gate", decision.summary()[:5000])
        describe(settings, parent_run_id, rules.model_name, str(mv.version), decision, evaluation, data_md5)
        if decision.promote:
            set_champion(settings, rules.model_name, mv.version, champion.version, decision.summary())
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
