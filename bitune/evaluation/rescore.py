"""Score a saved classifier on texts the way it was trained: its own normalisation, tokenizer and length.

The promotion gate re-scores the champion on the challenger's test split. The challenger's token ids
cannot be reused for that: after a change of base model or `preprocess.max_length` they belong to
another vocabulary (an IndexError in the champion's embeddings, or quietly wrong inputs). So the
champion reads the split's text and encodes it with what its own `bitune.json` records.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from bitune.data.prepared import PreparedData
from bitune.data.preprocess import normalise_texts
from bitune.device import make_accelerator
from bitune.errors import DataError
from bitune.evaluation.metrics import named_metrics
from bitune.evaluation.unseen import GateRows
from bitune.model.classifier import BituneClassifier, ClassifierMeta, load_classifier
from bitune.params import Params
from bitune.promotion import CKA
from bitune.tuning.phase import PhaseContext, predict_logits
from bitune.tuning.phase_context import inference_context


def encode_texts(
    tokenizer: PreTrainedTokenizerBase, meta: ClassifierMeta, texts: Sequence[str]
) -> list[dict[str, list[int]]]:
    """Rows of input_ids/attention_mask as training tokenized them (no padding: batches pad themselves).

    The model's own normalisation, tokenizer and `max_length` from its meta, whatever the caller's
    params say: the same arguments as `bitune.data.preprocess` tokenizes with.
    """
    normalised = normalise_texts(pd.Series(list(texts), dtype=object), meta.preprocess())
    encoded = tokenizer(
        normalised.tolist(),
        truncation=True,
        max_length=meta.max_length,
        padding=False,
        return_token_type_ids=False,
    )
    return [
        {"input_ids": ids, "attention_mask": mask}
        for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"], strict=True)
    ]


def label_ids(meta: ClassifierMeta, labels: Sequence[Any]) -> torch.Tensor:
    """Label names as the model's class ids (its own label order, whatever order the data has)."""
    index = {name: i for i, name in enumerate(meta.labels)}
    unknown = sorted({str(label) for label in labels} - index.keys())
    if unknown:
        raise DataError(f"labels {unknown} are not among the model's labels {list(meta.labels)}")
    return torch.as_tensor([index[str(label)] for label in labels], dtype=torch.long)


def score_texts(
    model: BituneClassifier,
    tokenizer: PreTrainedTokenizerBase,
    meta: ClassifierMeta,
    texts: Sequence[str],
    ctx: PhaseContext,
) -> torch.Tensor:
    """Logits for `texts` in order, batched and autocast exactly as the evaluation of a new model."""
    model.to(ctx.accelerator.device)
    return predict_logits(model, encode_texts(tokenizer, meta, texts), ctx, tokenizer.pad_token_id or 0)


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
    ctx = inference_context(make_accelerator(params.train), model, params.train.eval_batch_size, progress)
    logits = score_texts(model, tokenizer, meta, test["text"].tolist(), ctx)
    return named_metrics(logits, label_ids(meta, test["label"].tolist()), meta.labels)


def challenger_metrics(
    evaluated: dict[str, float], model_dir: Path, params: Params, prepared: PreparedData, rows: GateRows
) -> dict[str, float]:
    """The challenger's scores on the rows the champion is compared on: its evaluation (`evaluated`)
    when that is all of them, else a re-score of the same rows through the champion's code path."""
    if not rows.excluded:
        return evaluated
    test = pd.read_parquet(prepared.split_file("test"))
    scores = score_test_rows(load_classifier(model_dir), test[rows.keep], params)
    if CKA in evaluated:  # measured on the probe texts, not the test rows
        scores[CKA] = evaluated[CKA]
    return scores
