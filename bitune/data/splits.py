"""Train/validation/test splits: stratified by label, fixed by `data.split.seed`, pre-splits respected.

A source that comes split (a folder of split files, most hub datasets) keeps its split, so scores
stay comparable with published ones; whatever is missing is carved out of train. Validation
(`bitune.data.validation`) asks `carve_plan` what will be carved so it can reject too-small classes
before any split runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
from sklearn.model_selection import train_test_split

from bitune.errors import DataError
from bitune.params import SplitParams

SPLITS = ("train", "validation", "test")
MIN_PER_CLASS_PER_SPLIT = 2


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


def split_frame(df: pd.DataFrame, split: SplitParams) -> dict[str, pd.DataFrame]:
    """Stratified train/validation/test of one frame; the same frame and seed give the same split."""
    rest, test = _carve(
        df, split.test, split.seed, (1 - split.validation - split.test, split.validation, split.test)
    )
    train, validation = _carve(rest, split.validation / (1 - split.test), split.seed, ())
    return {"train": _reset(train), "validation": _reset(validation), "test": _reset(test)}


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
    fractions = plan[1] if plan else ()
    train, validation, test = raw_frames["train"], raw_frames.get("validation"), raw_frames.get("test")
    if test is None:
        train, test = _carve(train, split.test, split.seed, fractions)
    if validation is None:
        train, validation = _carve(train, split.validation, split.seed, fractions)
    return {"train": _reset(train), "validation": _reset(validation), "test": _reset(test)}


def _carve(
    df: pd.DataFrame, fraction: float, seed: int, fractions: Sequence[float]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rest, carved): `fraction` of the rows, stratified; `fractions` set the per-class minimum checked."""
    if fractions:
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
    try:
        rest, carved = train_test_split(df, test_size=fraction, stratify=df["label"], random_state=seed)
    except ValueError as exc:
        raise DataError(
            f"cannot split {len(df)} rows stratified by label ({exc}); add rows or change data.split"
        ) from None
    return rest, carved


def _reset(df: pd.DataFrame) -> pd.DataFrame:
    return df.reset_index(drop=True)
