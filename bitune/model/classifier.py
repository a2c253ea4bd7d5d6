"""The classifier bitune trains: a pretrained encoder, a pooling choice, and a linear head.

We do not use `AutoModelForSequenceClassification`: it hard-wires the pooling (BERT: the pooler on
[CLS]), while sentence-transformers checkpoints such as all-MiniLM-L6-v2 were trained for mean
pooling and have no trained pooler. Splitting the forward pass into `encode` (everything below the
head) and `top` (pooler, if used, and head) is also what lets the head phase train on cached features.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file
from safetensors.torch import load_model, save_model
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from bitune.data.seen import seen_text_keys
from bitune.errors import ModelError, first_line
from bitune.model.source import check_model_folder, not_cached_offline, resolve_model_source
from bitune.params import ModelParams, PreprocessParams

WEIGHTS_FILE = "model.safetensors"
META_FILE = "bitune.json"
SEEN_FILE = "seen_texts.safetensors"  # fingerprints of the train and validation texts (bitune.data.seen)
SEEN_TENSOR = "split_key_fingerprints"


def _load_error(model: ModelParams, exc: Exception) -> ModelError:
    offline = not_cached_offline(model)
    if offline is not None:
        return offline
    first = first_line(exc)
    return ModelError(
        f"model.name_or_path: cannot load {model.name_or_path!r} ({first[:160]}); use a local folder "
        "with safetensors weights or a hub id reachable from here"
    )


def load_tokenizer(model: ModelParams) -> PreTrainedTokenizerBase:
    source = resolve_model_source(model.name_or_path)
    check_model_folder(source)
    try:
        return AutoTokenizer.from_pretrained(
            source, revision=model.revision, trust_remote_code=model.trust_remote_code
        )
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(model, exc) from None


def load_backbone(model: ModelParams) -> PreTrainedModel:
    """The pretrained encoder, safetensors only (no pickled weights), remote code only if allowed."""
    source = resolve_model_source(model.name_or_path)
    check_model_folder(source)
    try:
        return AutoModel.from_pretrained(
            source, revision=model.revision, trust_remote_code=model.trust_remote_code, use_safetensors=True
        )
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(model, exc) from None


def load_config(model: ModelParams) -> PretrainedConfig:
    """The pretrained model's config alone (no weights read)."""
    source = resolve_model_source(model.name_or_path)
    check_model_folder(source)
    try:
        return AutoConfig.from_pretrained(
            source, revision=model.revision, trust_remote_code=model.trust_remote_code
        )
    except (OSError, ValueError, KeyError) as exc:
        raise _load_error(model, exc) from None


def encoder_num_layers(model: ModelParams) -> int | None:
    """The encoder's layer count from its config alone; None if the config has none.

    Lets a strategy's `layers[i:j]` be checked against the model before any phase trains.
    """
    layers = getattr(load_config(model), "num_hidden_layers", None)
    return layers if isinstance(layers, int) else None


def meta_backbone(model: ModelParams) -> PreTrainedModel:
    """The encoder built from its config on the meta device: its structure, without memory or weights,
    for checks that every architecture should answer the same way before anything trains."""
    config = load_config(model)
    with torch.device("meta"):
        return AutoModel.from_config(config, trust_remote_code=model.trust_remote_code)


def max_input_tokens(backbone: nn.Module) -> int | None:
    """How many tokens a text may have for the encoder's learned position embeddings; None when it has
    none (relative or rotary positions: DeBERTa-v3, ModernBERT).

    The embedding table named `position_embeddings`, less the positions a padding index reserves
    (RoBERTa's start after `pad_token_id`, so 514 positions take 512 tokens).
    """
    for name, module in backbone.named_modules():
        if name.split(".")[-1] == "position_embeddings" and isinstance(module, nn.Embedding):
            reserved = module.padding_idx + 1 if module.padding_idx is not None else 0
            return module.num_embeddings - reserved
    return None


def check_tokenizer_fits(model: ModelParams, tokenizer: PreTrainedTokenizerBase) -> None:
    """A tokenizer with more tokens than the model has embeddings (another model's tokenizer copied
    into the folder) passes every load and fails mid-run with "index out of range", after the data
    step: say it in the preflight instead."""
    vocab_size = getattr(load_config(model), "vocab_size", None)
    if isinstance(vocab_size, int) and len(tokenizer) > vocab_size:
        raise ModelError(
            f"model.name_or_path: {model.name_or_path}'s tokenizer has {len(tokenizer)} tokens but the model "
            f"embeds only {vocab_size} (config.json vocab_size): the tokenizer is another model's; save "
            "this model's own with tokenizer.save_pretrained(...)"
        )


def _default_pools_mean(backbone: PreTrainedModel) -> bool:
    """Whether the model's own classifier mean-pools: a model without a pooler that says so in its
    config (ModernBERT's `classifier_pooling: mean`, as ModernBERT-base ships); else [CLS]."""
    has_pooler = getattr(backbone, "pooler", None) is not None
    return not has_pooler and getattr(backbone.config, "classifier_pooling", None) == "mean"


class BituneClassifier(nn.Module):
    """Encoder → pooling → (pooler) → dropout → linear head."""

    def __init__(self, backbone: PreTrainedModel, num_labels: int, pooling: str, dropout: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        has_pooler = getattr(backbone, "pooler", None) is not None
        self.uses_pooler = pooling == "default" and has_pooler
        self.pools_mean = pooling == "mean" or (pooling == "default" and _default_pools_mean(backbone))
        hidden = backbone.config.hidden_size
        self.num_labels = num_labels
        linear = nn.Linear(hidden, num_labels)
        generator = torch.Generator().manual_seed(0)  # the same head init whatever the global seed
        with torch.no_grad():
            linear.weight.copy_(torch.randn(num_labels, hidden, generator=generator) * 0.02)
            linear.bias.zero_()
        self.head = nn.Sequential(nn.Dropout(dropout), linear)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Everything below the trainable top: the features the head phase can cache."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pools_mean:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return hidden[:, 0]

    def top(self, features: torch.Tensor) -> torch.Tensor:
        if self.uses_pooler:
            pooler = cast(nn.Module, self.backbone.pooler)
            features = pooler(features.unsqueeze(1))
        return self.head(features)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, with_features: bool = False, **_: Any
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits; with `with_features`, (logits, pooled features) from one pass, through forward so
        that DDP and torch.compile see it."""
        features = self.encode(input_ids, attention_mask)
        logits = self.top(features)
        return (logits, features) if with_features else logits


@dataclass(frozen=True)
class ClassifierMeta:
    """What travels with the weights so the model can be rebuilt and served anywhere.

    The text normalisation travels too: serving must see texts as training saw them. A meta file
    written before it was stored loads with the defaults of that time (PreprocessParams' own).
    """

    labels: list[str]
    pooling: str
    dropout: float
    max_length: int
    source_model: str
    lowercase: bool = False
    strip: bool = True
    normalize_whitespace: bool = True

    @classmethod
    def for_training(cls, labels: list[str], model: ModelParams, pre: PreprocessParams) -> ClassifierMeta:
        return cls(
            labels=list(labels),
            pooling=model.pooling,
            dropout=model.dropout,
            max_length=pre.max_length,
            source_model=model.name_or_path,
            lowercase=pre.lowercase,
            strip=pre.strip,
            normalize_whitespace=pre.normalize_whitespace,
        )

    def preprocess(self) -> PreprocessParams:
        """The preprocess params the model was trained with, for `normalise_texts` at prediction time."""
        return PreprocessParams(
            lowercase=self.lowercase,
            strip=self.strip,
            normalize_whitespace=self.normalize_whitespace,
            max_length=self.max_length,
        )


def save_classifier(
    model: BituneClassifier,
    tokenizer: PreTrainedTokenizerBase,
    meta: ClassifierMeta,
    folder: Path,
    seen_texts: Iterable[object] | None = None,
) -> Path:
    """One safetensors file + encoder config + tokenizer + labels: loadable without bitune's params.

    `seen_texts` (train and validation) are stored as fingerprints, so a promotion gate that later
    re-scores this model can leave out the test rows it has seen; without them no record is written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    model.backbone.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_model(model, str(folder / WEIGHTS_FILE))
    (folder / META_FILE).write_text(json.dumps(asdict(meta), indent=2))
    seen = folder / SEEN_FILE
    if seen_texts is None:
        seen.unlink(missing_ok=True)  # a record left from another model would exclude the wrong rows
    else:
        save_file({SEEN_TENSOR: seen_text_keys(seen_texts)}, str(seen))
    return folder


def load_seen_text_keys(folder: Path) -> np.ndarray | None:
    """The sorted int64 fingerprints of the texts the model trained and chose its epoch on; None for
    a model saved without that record (before it was kept, or by a caller that had no texts)."""
    path = Path(folder) / SEEN_FILE
    if not path.exists():
        return None
    try:
        keys = load_file(str(path)).get(SEEN_TENSOR)
    except (SafetensorError, OSError) as exc:
        raise ModelError(
            f"{path}: unreadable ({str(exc)[:120]}); delete it or save the model again"
        ) from None
    if keys is None or keys.dtype != np.int64 or keys.ndim != 1:
        raise ModelError(f"{path}: no 1-d int64 tensor {SEEN_TENSOR!r}; delete it or save the model again")
    return keys


def load_classifier(folder: Path) -> tuple[BituneClassifier, PreTrainedTokenizerBase, ClassifierMeta]:
    folder = Path(folder)
    try:
        meta = ClassifierMeta(**json.loads((folder / META_FILE).read_text()))
    except FileNotFoundError:
        raise ModelError(f"{folder}: no {META_FILE}; not a model saved by bitune") from None
    config = AutoConfig.from_pretrained(folder)
    backbone = AutoModel.from_config(config)
    model = BituneClassifier(backbone, len(meta.labels), meta.pooling, meta.dropout)
    load_model(model, str(folder / WEIGHTS_FILE))
    model.eval()
    return model, AutoTokenizer.from_pretrained(folder), meta
