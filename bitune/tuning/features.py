"""Head phase on cached features: encode once with the frozen backbone, train the top many epochs.

When nothing below the pooler trains, every epoch would recompute the same encoder outputs; caching
them turns a head phase from minutes into seconds. Features live in memory, and on disk (safetensors)
keyed by model, data version, tokenizer settings and pooling when the backbone is still pretrained.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from bitune.model.classifier import BituneClassifier
from bitune.model.source import model_identity
from bitune.params import Params
from bitune.tuning.batching import length_grouped_batches, pad_batch

Rows = list[dict]
Autocast = Callable[[], AbstractContextManager[Any]]

log = logging.getLogger(__name__)


def feature_cache_file(root: Path, params: Params, data_key: str, precision: str) -> Path | None:
    """Where the head phase's features on the pretrained encoder live; None when caching is off.

    Keyed by everything the features are a function of: the tokenized data (`data_key`, the prepared
    data's key: data version, split, tokenizer name, preprocess), the pretrained weights
    (`model_identity`: id, revision, a local folder's config and weight files), the pooling and the
    precision.
    """
    if params.train.feature_cache_dir is None:
        return None
    pooling = params.model.pooling
    return (
        root
        / params.train.feature_cache_dir
        / f"{data_key}-{model_identity(params.model)}-{pooling}-{int(pooling == 'default')}"
        f"-{precision}.safetensors"
    )


def features_precision(mixed_precision: str, bf16_norms: bool) -> str:
    """The precision part of a feature cache's key: bf16 features differ with `train.bf16_norms`
    (LayerNorm's output rounded to bf16 or not); fp32 ones do not."""
    return "bf16-norms" if mixed_precision == "bf16" and bf16_norms else mixed_precision


@torch.inference_mode()
def encode_rows(
    model: BituneClassifier,
    rows: Rows,
    batch_size: int,
    pad_token_id: int,
    device: torch.device,
    autocast: Autocast = nullcontext,
    quiet: bool = False,
) -> torch.Tensor:
    """`model.encode` over all rows, in the rows' order (batches are length-sorted for speed).

    `autocast` makes a fresh context per batch (accelerate's is single-use), so the encoding pass runs
    in the phase's precision: bf16 where training is bf16. `quiet` hides the bar (every DDP rank encodes).
    """
    was_training = model.training
    model.eval()
    out: list[torch.Tensor | None] = [None] * len(rows)
    batches = length_grouped_batches([len(r["input_ids"]) for r in rows], batch_size, 0, shuffle=False)
    for batch_ids in tqdm(batches, desc="encode features", leave=False, disable=quiet):
        batch = pad_batch([rows[i] for i in batch_ids], pad_token_id)
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        with autocast():
            feats = model.encode(ids, mask)
        for i, f in zip(batch_ids, feats.float().cpu(), strict=True):
            out[i] = f
    model.train(was_training)
    return torch.stack(out)  # type: ignore[arg-type]


def cached_features(
    model: BituneClassifier,
    splits: dict[str, Rows],
    cache_file: Path | None,
    batch_size: int,
    pad_token_id: int,
    device: torch.device,
    autocast: Autocast = nullcontext,
    quiet: bool = False,
) -> dict[str, torch.Tensor]:
    """Features per split, read from `cache_file` when it exists, written to it otherwise.

    A file that cannot be read (a run killed mid-copy, a full disk, bit rot) is a cache miss, not
    an error: the features are encoded again and replace it whole (`save_features`).
    """
    if cache_file is not None and cache_file.exists():
        loaded = _read_features(cache_file)
        if all(name in loaded and len(loaded[name]) == len(rows) for name, rows in splits.items()):
            return {name: loaded[name] for name in splits}
    feats = {
        name: encode_rows(model, rows, batch_size, pad_token_id, device, autocast, quiet)
        for name, rows in splits.items()
    }
    if cache_file is not None:
        save_features(feats, cache_file)
    return feats


def _read_features(cache_file: Path) -> dict[str, torch.Tensor]:
    """The cached tensors, or none when the file is not a readable safetensors file."""
    try:
        return load_file(str(cache_file))
    except SafetensorError as exc:
        log.warning("feature cache %s is unreadable (%s); encoding the features again", cache_file, exc)
        return {}


def save_features(feats: dict[str, torch.Tensor], cache_file: Path) -> None:
    """Write to a temp file of this process's own, then rename: safe with several writers.

    Every DDP rank encodes the same features and writes them; with one shared temp name a rank
    could rename another's half-written file into place, or find its temp file renamed away. Each
    rename replaces the file whole, so a reader sees one complete copy or another.
    """
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        save_file({k: v.contiguous() for k, v in feats.items()}, str(tmp))
        tmp.replace(cache_file)
    finally:
        tmp.unlink(missing_ok=True)
