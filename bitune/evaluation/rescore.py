"""Score a saved classifier on texts the way it was trained: its own normalisation, tokenizer and length.

The promotion gate re-scores the champion on the challenger's test split. The challenger's token ids
cannot be reused for that: after a change of base model or `preprocess.max_length` they belong to
another vocabulary (an IndexError in the champion's embeddings, or quietly wrong inputs). So the
champion reads the split's text and encodes it with what its own `bitune.json` records.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from bitune.data.preprocess import normalise_texts
from bitune.errors import DataError
from bitune.model.classifier import BituneClassifier, ClassifierMeta
from bitune.tuning.phase import PhaseContext, predict_logits


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
