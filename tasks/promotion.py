"""Manual registry moves and run comparison: `bitune promote`, `rollback`, `compare`.

Plain functions over an MlflowClient, no Prefect. A manual promotion runs the same gate as the flow
on the scores each version's run logged on its test split (`test/*`). Those scores only compare when
both test splits hold the same rows (tag `bitune.test_split`). When they differ and either version's
test split is prepared on this machine (`.bitune/prepared/*/test.parquet`), both versions are scored
again on its rows that neither trained on (each model folder records its training rows, as for the
flow's gate); without such a split the gate refuses. The `champion` alias moves in one write and the
version it replaced is recorded on the new champion, so the registry never holds two champions or
none and `rollback` can walk back the chain; each move is added to the champion history
(`tasks.champion_moves`, `bitune history`) and to the affected versions' descriptions.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bitune.champion_moves import PROMOTE, ROLLBACK, ChampionMove
from bitune.data.prepared import PREPARED
from bitune.errors import BituneError, TrackingError, first_line
from bitune.evaluation.run_comparison import COMPARED, RunRow
from bitune.params import Params, redact
from bitune.promotion import (
    GateDecision,
    Rescore,
    StoredScores,
    decide_on_rescore,
    decide_on_stored_scores,
    needs_rescore,
)
from bitune.tag_names import (
    DATA_VERSION,
    MANUAL_GATE,
    MODEL_VERSION,
    PIPELINE,
    PREVIOUS_CHAMPION,
    RESTORED,
    ROLLED_BACK,
    STRATEGY,
    TEST_SPLIT,
)
from tasks.champion_moves import CHAMPION, champion_history, move_champion
from tasks.tracking import TrackingSettings, check_reachable, damaged_store

if TYPE_CHECKING:
    import pandas as pd

# bitune.evaluation.rescore (the re-score's code path) is imported inside the functions that need it: it
# pulls in torch, seconds that `bitune compare` and every error path need not pay. So are pandas and
# the model code, which only a re-score needs.

# MLflow 3 fetches proxied artifacts from presigned URLs on the server's own S3 endpoint when the server
# offers them; compose's is `http://minio:9000`, a name only its containers resolve. Streaming through
# the server is what `--serve-artifacts` is for: a client needs no route to the bucket. (Env, not an
# argument: MLflow reads it at each download; a value the user set wins.)
DOWNLOAD_THROUGH_SERVER = {"MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false"}


class PromotionRefused(BituneError):
    """The gate kept the champion; the version's tag `bitune.manual_gate` says why."""


@dataclass(frozen=True)
class Promotion:
    """What a promote or rollback did: `version` is the champion now, `replaced` the one before."""

    name: str
    version: str
    replaced: str | None
    reasons: list[str]
    changed: bool = True
    replaced_aliases: list[str] = field(default_factory=list)  # what `replaced` still holds, sorted
    rescored: Rescore | None = None  # both scored again on local test rows: the gate decided on these
    split_file: Path | None = None  # the prepared test split they came from


@contextmanager
def registry_errors(settings: TrackingSettings) -> Iterator[None]:
    """MLflow failures as one-line TrackingErrors; the store is checked before anything is asked of it.

    Open the client inside: on SQLite, `settings.client()` opens the store, and opening a missing file
    creates an empty store (and MLflow's "Creating initial MLflow database tables" lines).
    """
    ensure_store(settings)
    try:
        yield
    except MlflowException as exc:
        damaged = damaged_store(settings, exc)  # a page past the header: MLflow wraps SQLite's error
        if damaged is not None:
            raise damaged from None
        first = first_line(exc)
        shown = redact(settings.uri_setting, settings.uri)
        if "Max retries exceeded" in first or "Connection refused" in first:
            raise TrackingError(
                f"{settings.uri_setting}: cannot reach MLflow at {shown}; start the server "
                "or point tracking.uri / MLFLOW_TRACKING_URI at a running one"
            ) from None
        raise TrackingError(f"registry: MLflow at {shown} refused: {first}") from None


def ensure_store(settings: TrackingSettings) -> None:
    """Fail fast, writing nothing: a missing (or empty) SQLite file would be created as an empty store,
    a damaged one fail as SQLAlchemy's error, a down server be retried for minutes."""
    uri = settings.uri
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file() or path.stat().st_size == 0:
            raise TrackingError(
                f"{settings.uri_setting}: no MLflow store at {path}, so no runs or models yet; run "
                "`bitune run` first (or pass --project / set MLFLOW_TRACKING_URI if they are elsewhere)"
            )
    # one request without retries: a damaged SQLite file, a server that is down, or one that refuses
    # the credentials in MLFLOW_TRACKING_USERNAME/PASSWORD is one line now (a damaged file is only
    # read: SQLite refuses it at its header)
    check_reachable(settings)


def version_number(text: str, command: str = "promote") -> str:
    """A model version as typed (`3`, or `v3` as `bitune compare` shows it) as the registry's number;
    anything else is the user's slip, said before MLflow is asked (it would answer as a server fault)."""
    number = text.strip().removeprefix("v")
    if not number.isdecimal() or not number.isascii():
        raise BituneError(
            f"{command}: version {text!r} is not a version number; `bitune compare` lists the versions"
        )
    return str(int(number))


def version_to_serve(settings: TrackingSettings, name: str, version: str | None) -> ModelVersion:
    """The registered version `bitune serve` starts: `version`, or the champion when None; pinned to
    its number at start, so what serves does not change when the alias moves."""
    with registry_errors(settings):
        client = settings.client()
        if version is not None:
            return get_version(client, name, version_number(version, "serve"))
        champion = get_champion(client, name)
    if champion is None:
        raise TrackingError(
            f"serve: {name} has no champion yet; `bitune run` registers one, or name a version to serve"
        )
    return champion


def get_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise TrackingError(
            f"registry: {name} has no version {version}; `bitune compare` lists the runs and their versions"
        ) from None


def get_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        return None


def version_scores(client: MlflowClient, mv: ModelVersion) -> dict[str, float]:
    """The `test/*` scores of the run that produced the version (tags on the version as fallback)."""
    scores = {}
    for key, value in mv.tags.items():
        if key.startswith("test/"):
            try:
                scores[key] = float(value)
            except ValueError:
                continue
    if mv.run_id:
        metrics = client.get_run(mv.run_id).data.metrics
        scores |= {k: v for k, v in metrics.items() if k.startswith("test/")}
    return scores


def stored_scores(client: MlflowClient, mv: ModelVersion) -> StoredScores:
    """A version's logged test scores with the data version and test rows they were measured on."""
    return StoredScores(
        str(mv.version),
        version_scores(client, mv),
        mv.tags.get(DATA_VERSION),
        mv.tags.get(TEST_SPLIT),
    )


def download_classifier(settings: TrackingSettings, name: str, version: str, dst: Path) -> Path:
    """A registered version's classifier folder (the one holding `bitune.json`), downloaded into `dst`."""
    for key, value in DOWNLOAD_THROUGH_SERVER.items():
        os.environ.setdefault(key, value)
    # not `models:/name/version`: MLflow resolves that through the global registry URI (by default the
    # cwd's mlflow.db), whatever tracking_uri says; the pinned client finds the right version
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=settings.client().get_model_version_download_uri(name, version),
        dst_path=str(dst),
        tracking_uri=settings.uri,
    )
    return next(Path(local).rglob("bitune.json")).parent


@dataclass(frozen=True)
class LocalSplit:
    """A prepared test split on this machine whose rows one of the versions was scored on."""

    digest: str  # its `split_digest`, as a version's `bitune.test_split` records it
    file: Path
    rows: pd.DataFrame  # text and label


def local_test_split(root: Path, splits: Sequence[str]) -> LocalSplit | None:
    """The project's prepared test split whose digest is the first of `splits` found (newest folder
    first); None when none of them was prepared here. An unreadable file is passed over."""
    import pandas as pd

    from bitune.data.seen import split_digest

    found: dict[str, LocalSplit] = {}
    files = sorted((root / PREPARED).glob("*/test.parquet"), key=lambda f: f.stat().st_mtime, reverse=True)
    for file in files:
        try:
            rows = pd.read_parquet(file, columns=["text", "label"])
        except (OSError, ValueError, KeyError):
            continue  # a half-written or foreign file: not a split to compare on
        digest = split_digest(rows["text"].tolist(), rows["label"].tolist())
        if digest in splits:
            found.setdefault(digest, LocalSplit(digest, file, rows))
            if digest == splits[0]:
                break
    return next((found[s] for s in splits if s in found), None)


def rescore_on_local_split(
    settings: TrackingSettings,
    params: Params,
    root: Path,
    challenger: StoredScores,
    champion: StoredScores,
) -> tuple[Rescore, Path] | None:
    """Both versions scored on the rows of a local test split that neither trained on (the challenger's
    split, else the champion's), through the flow gate's code path; and the split's file.

    None when no fair comparison can be made here: neither split is prepared on this machine, a
    version has no record of its training rows and the split is not its own test split, the models'
    labels are not the split's, or the rows left fall short of the flow gate's minimum for the metric.
    """
    import numpy as np

    from bitune.evaluation.rescore import score_test_rows
    from bitune.evaluation.unseen import GateRows, gate_rows
    from bitune.model.classifier import load_classifier, load_seen_text_keys

    local = local_test_split(root, [s for s in (challenger.test_split, champion.test_split) if s])
    if local is None:
        return None
    texts, labels = local.rows["text"].tolist(), [str(label) for label in local.rows["label"]]
    keep = np.ones(len(texts), dtype=bool)
    models = []
    with tempfile.TemporaryDirectory() as tmp:
        for stored in (challenger, champion):
            dst = Path(tmp) / stored.version
            dst.mkdir()
            folder = download_classifier(settings, params.registry.model_name, stored.version, dst)
            seen = load_seen_text_keys(folder)
            if seen is not None:
                keep &= gate_rows(texts, labels, seen).keep
            elif stored.test_split != local.digest:
                return None  # it may have trained on any of these rows
            models.append(load_classifier(folder))
        if any(sorted(meta.labels) != sorted(set(labels)) for _, _, meta in models):
            return None
        rows = GateRows(keep, tuple(labels), recorded=True)
        if rows.blocker(params.registry.metric) is not None:
            return None
        test = local.rows[keep]
        scores = [score_test_rows(model, test, params, progress=False) for model in models]
    return Rescore(local.digest, rows.kept, rows.total, scores[0], scores[1]), local.file


def promote(
    settings: TrackingSettings, params: Params, version: str, force: bool = False, root: Path | None = None
) -> Promotion:
    """Make `version` the champion if the gate agrees (or `force`); tag the decision on the version.

    `root` is the project: when the logged scores are on different test rows, a test split prepared
    there lets the gate decide on fresh scores (see `rescore_on_local_split`).
    """
    version = version_number(version)
    rules = params.registry
    name = rules.model_name
    rescored: tuple[Rescore, Path] | None = None
    with registry_errors(settings):
        client = settings.client()
        target = get_version(client, name, version)
        version = str(target.version)
        current = get_champion(client, name)
        replaced = str(current.version) if current is not None else None
        if replaced == version:
            return Promotion(name, version, replaced, ["already the champion"], changed=False)
        if force:
            decision = GateDecision(True, ["forced with --force, gate not checked"])
        else:
            ours = stored_scores(client, target)
            theirs = stored_scores(client, current) if current else None
            if theirs is not None and root is not None and needs_rescore(ours, theirs):
                rescored = rescore_on_local_split(settings, params, root, ours, theirs)
            if rescored is not None and theirs is not None:
                decision = decide_on_rescore(ours, theirs, rescored[0], rules)
            else:
                decision = decide_on_stored_scores(ours, theirs, rules)
        client.set_model_version_tag(name, version, MANUAL_GATE, decision.summary()[:5000])
        if not decision.promote:
            why = "; ".join(decision.reasons)
            hint = "" if "--force" in why else "; use --force to promote anyway"  # said once
            raise PromotionRefused(
                f"promote: the gate kept version {replaced} as champion over version {version} ({why}){hint}"
            )
        move_champion(client, name, version, replaced, PROMOTE, f"manual {decision.summary()}")
    return Promotion(
        name,
        version,
        replaced,
        decision.reasons,
        rescored=rescored[0] if rescored else None,
        split_file=rescored[1] if rescored else None,
    )


def rollback(settings: TrackingSettings, name: str) -> Promotion:
    """Move `champion` back to the version it replaced (tag `bitune.previous_champion`)."""
    with registry_errors(settings):
        client = settings.client()
        current = get_champion(client, name)
        if current is None:
            raise TrackingError(
                f"rollback: {name} has no champion to roll back; `bitune promote VERSION` sets one"
            )
        previous = current.tags.get(PREVIOUS_CHAMPION)
        if not previous:
            raise TrackingError(
                f"rollback: champion version {current.version} of {name} replaced no earlier "
                f"champion (no tag {PREVIOUS_CHAMPION}); promote a version with `bitune promote VERSION`"
            )
        restored = get_version(client, name, previous)
        client.set_model_version_tag(
            name, str(current.version), ROLLED_BACK, f"replaced by version {restored.version}"
        )
        client.set_model_version_tag(
            name, str(restored.version), RESTORED, f"rollback from version {current.version}"
        )
        # the restored version keeps its own `bitune.previous_champion` and `bitune.promotion` tags, so a
        # second rollback goes one step further back and the original promotion reason survives
        move_champion(
            client,
            name,
            str(restored.version),
            str(current.version),
            ROLLBACK,
            f"rollback: version {current.version} had replaced version {restored.version}",
        )
    return Promotion(
        name,
        str(restored.version),
        str(current.version),
        [f"rolled back from version {current.version}"],
        replaced_aliases=sorted(set(current.aliases) - {CHAMPION}),  # read before the move
    )


def rollback_target(settings: TrackingSettings, name: str) -> str | None:
    """The version `rollback` would make champion now; None where it refuses (no champion, or one
    that replaced no earlier champion). `bitune history` offers the rollback only then."""
    with registry_errors(settings):
        current = get_champion(settings.client(), name)
    return (current.tags.get(PREVIOUS_CHAMPION) or None) if current is not None else None


def compare_runs(settings: TrackingSettings, model_name: str) -> list[RunRow]:
    """Parent runs of the retrain flow, oldest first, with their test scores and registry aliases."""
    with registry_errors(settings):
        client = settings.client()
        experiment = client.get_experiment_by_name(settings.experiment)
        if experiment is None:
            raise TrackingError(
                f"compare: no experiment {settings.experiment!r} at {settings.uri}; "
                "run `bitune run` first or pass --experiment"
            )
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`{PIPELINE}` LIKE '%'",
            order_by=["attributes.start_time ASC"],
            max_results=5000,
        )
        aliases: dict[str, list[str]] = {}
        try:
            for alias, v in client.get_registered_model(model_name).aliases.items():
                aliases.setdefault(str(v), []).append(alias)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
        rows = []
        for run in runs:
            tags = run.data.tags
            if "mlflow.parentRunId" in tags:
                continue
            version = tags.get(MODEL_VERSION)
            metrics = {k: run.data.metrics[k] for k in COMPARED if k in run.data.metrics}
            if version and len(metrics) < len(COMPARED):  # runs from before parents carried test scores
                try:
                    metrics = version_scores(client, client.get_model_version(model_name, version)) | metrics
                except MlflowException:
                    pass  # version deleted since: show what the run has
            end = run.info.end_time
            rows.append(
                RunRow(
                    run_id=run.info.run_id,
                    name=run.info.run_name or run.info.run_id[:8],
                    status=run.info.status,
                    strategy=tags.get(STRATEGY, ""),
                    data_version=tags.get(DATA_VERSION, "")[:8],
                    metrics={k: metrics[k] for k in COMPARED if k in metrics},
                    seconds=(end - run.info.start_time) / 1000 if end else None,
                    model_version=version,
                    aliases=sorted(aliases.get(version or "", [])),
                    params=dict(run.data.params),
                )
            )
    return rows


def champion_moves(settings: TrackingSettings, name: str) -> tuple[list[ChampionMove], str | None]:
    """The recorded moves of `name`'s champion, oldest first, and the version that holds it now."""
    with registry_errors(settings):
        client = settings.client()
        try:
            moves = champion_history(client, name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            raise TrackingError(
                f"history: no registered model {name!r} at {redact(settings.uri_setting, settings.uri)}; "
                "`bitune run` registers one (or check registry.model_name)"
            ) from None
        current = get_champion(client, name)
    return moves, str(current.version) if current is not None else None
