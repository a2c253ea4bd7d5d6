"""Train/validation/test splits: stable per text as data grows, stratified, pre-splits respected.

Each row's split follows from a hash of its normalised text and `data.split.seed` alone, not from
the other rows: when a new data version appends rows, every old row keeps its split, so the
champion is never re-scored on rows it trained on, and repeated texts always share one split. As
the hash is uniform, each class is split by the configured fractions up to sampling noise; a class
left with fewer than MIN_PER_CLASS_PER_SPLIT rows in a part gets them moved in from its largest
part, choosing rows next to the part's hash band, so even that repair never moves an old train row
into test as rows are added.

A source that comes split (a folder of split files, most hub datasets) keeps its split, so scores
stay comparable with published ones; whatever is missing is carved out of train. Validation
(`bitune.data.validation`) asks `carve_plan` what will be carved so it can reject too-small classes
before any split runs.
"""

from __future__ import annotations

import hashlib
import math
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from bitune.errors import DataError
from bitune.params import SplitParams

SPLITS = ("train", "validation", "test")
MIN_PER_CLASS_PER_SPLIT = 2
SPLIT_METHOD = "text-hash-v1"  # part of cache keys: prepared splits made another way never match


def min_rows_per_class(fractions: Sequence[float]) -> int:
    """Rows a class needs so each part of a stratified split gets MIN_PER_CLASS_PER_SPLIT of it."""
    return max(math.ceil(round(MIN_PER_CLASS_PER_SPLIT / f, 9)) for f in fractions)


def carve_plan(keys: Sequence[str], split: SplitParams) -> tuple[str, tuple[float, ...]] | None:
    """(frame that gets split, fractions of it that become parts), or None when nothing is carved."""
    present = set(keys)
    if present == {"all"} or present == {"train"}:
        return (
            "all" if "all" in present else "train",
            (1 - split.validation - split.test, split.validation, split.test),
        )
    missing = [name for name in ("validation", "test") if name not in present]
    if not missing:
        return None
    carved = tuple(getattr(split, name) for name in missing)
    return "train", (1 - sum(carved), *carved)


def split_key(text: object) -> str:
    """What makes two texts the same for splitting: Unicode form, case and spacing do not count."""
    return " ".join(unicodedata.normalize("NFKC", str(text)).casefold().split())


def key_positions(keys: Iterable[str], seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per split key, fixed by the key and the seed alone."""
    prefix = f"bitune-split\0{seed}\0".encode()
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(prefix + key.encode(), digest_size=8).digest(), "big") / 2**64
            for key in keys
        ],
        dtype=np.float64,
    )


def split_frame(df: pd.DataFrame, split: SplitParams) -> dict[str, pd.DataFrame]:
    """Stratified train/validation/test of one frame; a row's part depends on its text and the seed."""
    fractions = (1 - split.validation - split.test, split.validation, split.test)
    parts = _assign(df, {"test": split.test, "validation": split.validation}, split.seed, fractions)
    return {name: _reset(parts[name]) for name in SPLITS}


def make_splits(raw_frames: dict[str, pd.DataFrame], split: SplitParams) -> dict[str, pd.DataFrame]:
    """Always train/validation/test: {'all': df} is split; pre-splits are kept, gaps carved from train."""
    keys = set(raw_frames)
    unknown = sorted(keys - {"all", *SPLITS})
    if unknown or ("all" in keys and len(keys) > 1):
        raise DataError(
            f"unexpected split names {', '.join(sorted(keys))}; expected 'all' alone or "
            "train with validation and/or test"
        )
    if keys == {"all"}:
        return split_frame(raw_frames["all"], split)
    if "train" not in keys:
        raise DataError(f"splits {', '.join(sorted(keys))} have no train split; add train.* to the source")
    if keys == {"train"}:
        return split_frame(raw_frames["train"], split)
    plan = carve_plan(sorted(keys), split)
    if plan is None:
        return {name: _reset(raw_frames[name]) for name in SPLITS}
    bands = {name: getattr(split, name) for name in ("test", "validation") if name not in keys}
    carved = _assign(raw_frames["train"], bands, split.seed, plan[1])
    return {name: _reset(carved[name] if name in carved else raw_frames[name]) for name in SPLITS}


def _assign(
    df: pd.DataFrame, bands: dict[str, float], seed: int, fractions: Sequence[float]
) -> dict[str, pd.DataFrame]:
    """Parts of `df`: `bands` (name: fraction, in hash order from 0) and train for the rest.

    `fractions` (of train and the bands) set the per-class minimum checked before anything is split.
    """
    need = min_rows_per_class(fractions)
    counts = df["label"].value_counts()
    small = counts[counts < need]
    if len(small):
        label, count = str(small.index[0]), int(small.iloc[0])
        raise DataError(
            f"class {label!r} has {count} rows; a stratified split into "
            f"{', '.join(f'{f:.0%}' for f in fractions)} needs at least {need} per class — "
            "add rows, drop the class, or change data.split"
        )
    keys = np.array([split_key(t) for t in df["text"]], dtype=object)
    position = key_positions(keys, seed)
    edges: dict[str, tuple[float, float]] = {}
    start = 0.0
    for name, fraction in bands.items():
        edges[name] = (start, start + fraction)
        start += fraction
    edges["train"] = (start, 1.0)
    part = np.full(len(df), "train", dtype=object)
    for name, (low, high) in edges.items():
        part[(position >= low) & (position < high)] = name
    _ensure_minimum(df["label"].to_numpy(), keys, position, part, edges)
    return {name: df[part == name] for name in edges}


def _ensure_minimum(
    labels: np.ndarray,
    keys: np.ndarray,
    position: np.ndarray,
    part: np.ndarray,
    edges: dict[str, tuple[float, float]],
) -> None:
    """Top up any part holding fewer than MIN_PER_CLASS_PER_SPLIT rows of a class, in place.

    Rows come from the class's largest part, nearest the short part's hash band first, and a text
    moves with all its repeats. Only small classes ever need this: with the validated minimum the
    expected count per part is already above the floor.
    """
    for label in pd.unique(labels):
        of_label = labels == label
        for short, (low, high) in edges.items():
            while int(np.sum(of_label & (part == short))) < MIN_PER_CLASS_PER_SPLIT:
                sizes = {name: int(np.sum(of_label & (part == name))) for name in edges if name != short}
                donor = max(sizes, key=lambda name: sizes[name])
                if sizes[donor] <= MIN_PER_CLASS_PER_SPLIT:
                    break  # the class is below the validated minimum; nothing sensible to move
                candidates = np.flatnonzero(of_label & (part == donor))
                distance = np.maximum(low - position[candidates], position[candidates] - high)
                chosen = candidates[np.argmin(distance)]
                part[keys == keys[chosen]] = short


def _reset(df: pd.DataFrame) -> pd.DataFrame:
    return df.reset_index(drop=True)
