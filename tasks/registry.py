"""Stage 6, registration: log the model, register a version, alias it `challenger`, run the gate.

The champion is scored again on the challenger's test split before the gate compares them, so the
comparison is always on the same data version, and only on the rows the champion has not trained on
(its model folder records them); when some are left out the challenger is scored again on the rest.
Aliases move one at a time and the previous champion is recorded on the new one, so `bitune rollback`
can restore it; the registry is never left without a champion or with two, and every move is kept
(`tasks.champion_moves`).

The model is logged by `tasks.logged_model` (an MLflow 3 logged model of the parent run); each
version's source is `models:/<model_id>`.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException
from prefect import task

from bitune.champion_moves import REGISTRATION
from bitune.data.prepared import PreparedData
from bitune.data.seen import split_digest
from bitune.errors import TrackingError, first_line
from bitune.evaluation.rescore import challenger_metrics, score_test_rows
from bitune.evaluation.unseen import gate_rows
from bitune.model.classifier import load_classifier, load_seen_text_keys
from bitune.params import Params, RegistryParams
from bitune.promotion import CKA, ChampionOnTest, GateDecision, decide_at_registration, registration_text
from bitune.tag_names import (
    DATA_VERSION,
    GATE,
    MODEL_VERSION,
    PARAMS_DIGEST,
    SOURCE,
    STRATEGY,
    TEST_SPLIT,
)
from tasks.champion_moves import RUN_NOTE, move_champion
from tasks.evaluate import Evaluation
from tasks.logged_model import link_version_to_model, log_model, process_tracking_uri
from tasks.promotion import download_classifier, get_champion
from tasks.tracking import TrackingSettings

CHALLENGER = "challenger"


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
        first = first_line(exc, 160)
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
        STRATEGY: params.strategy.name,
        PARAMS_DIGEST: params.digest(),
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
                tags={**identity, SOURCE: source},
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
        client.set_model_version_tag(rules.model_name, mv.version, GATE, decision.summary()[:5000])
        describe(settings, parent_run_id, rules.model_name, str(mv.version), decision, evaluation, data_md5)
        if decision.promote:
            set_champion(
                settings, rules.model_name, mv.version, champion.version, decision.summary(), parent_run_id
            )
        client.set_tag(parent_run_id, MODEL_VERSION, mv.version)
        client.set_tag(parent_run_id, GATE, decision.summary()[:5000])
    except MlflowException as exc:
        raise TrackingError(
            f"registry: MLflow refused ({first_line(exc, 160)}); the champion is unchanged"
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
