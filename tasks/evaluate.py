"""Stage 5, evaluation: the final model on the held-out test split, as a nested MLflow run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from prefect import task

from bitune.data.prepared import PreparedData, load_rows
from bitune.device import make_accelerator
from bitune.evaluation.curves import plot_learning_curves
from bitune.evaluation.report import evaluate_predictions
from bitune.forgetting import DRIFT_PLOT, plot_drift
from bitune.model.classifier import load_classifier
from bitune.params import Params
from bitune.pipeline import pipeline_dir
from bitune.tag_names import PHASE, PIPELINE_KEY
from bitune.tuning.phase import predict_logits
from bitune.tuning.phase_context import inference_context
from bitune.tuning.phase_output import PhaseOutput
from tasks import tracking
from tasks.tracking import TrackingSettings


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, float]
    run_id: str | None
    artifacts: list[str]


def evaluate_fn(
    params: Params,
    prepared: PreparedData,
    phases: list[PhaseOutput],
    root: Path,
    pipeline_key: str,
    settings: TrackingSettings | None,
    parent_run_id: str | None,
) -> Evaluation:
    final = phases[-1]
    accelerator = make_accelerator(params.train)
    model, tokenizer, _ = load_classifier(Path(final.model_dir))
    model.to(accelerator.device)
    rows = load_rows(prepared, "test")
    ctx = inference_context(accelerator, model, params.train.eval_batch_size)
    logits = predict_logits(model, rows, ctx, tokenizer.pad_token_id or 0)
    labels = torch.as_tensor([r["labels"] for r in rows])
    texts = pd.read_parquet(prepared.split_file("test"))["text"].tolist()
    out_dir = pipeline_dir(root, pipeline_key) / "evaluation"
    metrics, paths = evaluate_predictions(texts, labels, logits, prepared.labels, out_dir)
    metrics["test/cka_to_pretrained"] = final.cka_to_pretrained
    paths.append(plot_learning_curves([(p.key, p.history) for p in phases], out_dir / "learning_curves.png"))
    paths.append(plot_drift({p.key: p.drift for p in phases}, out_dir / DRIFT_PLOT))
    run_id = None
    if settings is not None and accelerator.is_main_process:
        run_id = tracking.start_run(
            settings,
            "evaluate",
            {PHASE: "evaluate", PIPELINE_KEY: pipeline_key},
            parent_run_id,
        )
        tracking.log_params(
            settings,
            run_id,
            {"model_dir": final.model_dir, "test_rows": len(rows), "device": str(accelerator.device)},
        )
        tracking.log_metrics(settings, run_id, metrics)
        tracking.log_artifacts(settings, run_id, paths)
        tracking.end_run(settings, run_id)
    return Evaluation(metrics=metrics, run_id=run_id, artifacts=[str(p) for p in paths])


@task(name="evaluate")
def evaluate(
    params: Params,
    prepared: PreparedData,
    phases: list[PhaseOutput],
    root: str,
    pipeline_key: str,
    settings: TrackingSettings | None,
    parent_run_id: str | None,
) -> Evaluation:
    return evaluate_fn(params, prepared, phases, Path(root), pipeline_key, settings, parent_run_id)
