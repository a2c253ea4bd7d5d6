"""Splits: stratified, seeded, disjoint; pre-splits respected; gaps carved out of train."""

import pandas as pd
import pytest

from bitune.data.demo import make_demo_frame
from bitune.data.splits import carve_plan, make_splits, min_rows_per_class, split_frame
from bitune.data.validation import validate_frames
from bitune.errors import DataError
from bitune.params import DataParams, SplitParams


def three_classes(per_class: int) -> pd.DataFrame:
    labels = ["a"] * per_class + ["b"] * per_class * 2 + ["c"] * per_class
    return pd.DataFrame({"text": [f"text {i}" for i in range(len(labels))], "label": labels})


def test_split_is_stratified_disjoint_complete_and_sized_by_params() -> None:
    df = three_classes(100)
    parts = split_frame(df, SplitParams(validation=0.2, test=0.1, seed=3))
    assert {k: len(v) for k, v in parts.items()} == {"train": 280, "validation": 80, "test": 40}
    texts = [set(p["text"]) for p in parts.values()]
    assert set.union(*texts) == set(df["text"]) and sum(map(len, texts)) == len(df)
    for part in parts.values():
        assert part.index.equals(pd.RangeIndex(len(part)))
        shares = part["label"].value_counts(normalize=True)
        assert shares["b"] == pytest.approx(0.5, abs=0.02) and shares["a"] == pytest.approx(0.25, abs=0.02)


def test_same_seed_same_split_other_seed_other_split() -> None:
    df = make_demo_frame(200, 0)
    first, again = split_frame(df, SplitParams(seed=1)), split_frame(df, SplitParams(seed=1))
    for name in first:
        pd.testing.assert_frame_equal(first[name], again[name])
    assert set(split_frame(df, SplitParams(seed=2))["test"]["text"]) != set(first["test"]["text"])


@pytest.mark.parametrize("validation,test", [(0.1, 0.1), (0.15, 0.15), (0.2, 0.05), (0.3, 0.3), (0.12, 0.37)])
def test_the_validated_minimum_gives_two_rows_per_class_per_split(validation: float, test: float) -> None:
    split = SplitParams(validation=validation, test=test)
    need = min_rows_per_class((1 - validation - test, validation, test))
    df = pd.DataFrame({"text": [f"t{i}" for i in range(2 * need)], "label": ["x", "y"] * need})
    assert validate_frames({"all": df}, DataParams(split=split)).ok
    for part in split_frame(df, split).values():
        assert part["label"].value_counts().min() >= 2


def test_min_rows_per_class() -> None:
    assert min_rows_per_class((0.8, 0.1, 0.1)) == 20
    assert min_rows_per_class((0.7, 0.15, 0.15)) == 14
    assert min_rows_per_class((0.9, 0.1)) == 20


def test_too_small_class_is_a_data_error_naming_it() -> None:
    df = pd.concat([three_classes(30), pd.DataFrame({"text": ["odd 1", "odd 2"], "label": ["rare", "rare"]})])
    with pytest.raises(DataError, match="class 'rare' has 2 rows.*at least 20"):
        split_frame(df, SplitParams())


def test_complete_pre_split_is_kept_as_given() -> None:
    frames = {"train": three_classes(10), "validation": three_classes(2), "test": three_classes(3)}
    frames["test"].index += 100
    parts = make_splits(frames, SplitParams())
    for name, given in frames.items():
        pd.testing.assert_frame_equal(parts[name], given.reset_index(drop=True))


def test_missing_test_is_carved_out_of_train_stratified() -> None:
    train, validation = three_classes(50), three_classes(5)
    parts = make_splits({"train": train, "validation": validation}, SplitParams(test=0.2, seed=0))
    pd.testing.assert_frame_equal(parts["validation"], validation)
    assert len(parts["test"]) == 40 and len(parts["train"]) == 160
    assert parts["test"]["label"].value_counts().to_dict() == {"b": 20, "a": 10, "c": 10}
    assert not set(parts["test"]["text"]) & set(parts["train"]["text"])
    again = make_splits({"train": train, "validation": validation}, SplitParams(test=0.2, seed=0))
    pd.testing.assert_frame_equal(parts["test"], again["test"])


def test_missing_validation_is_carved_out_of_train() -> None:
    parts = make_splits({"train": three_classes(50), "test": three_classes(5)}, SplitParams(validation=0.1))
    assert len(parts["validation"]) == 20 and len(parts["train"]) == 180 and len(parts["test"]) == 20


def test_all_and_lone_train_are_split_the_same_way() -> None:
    df = make_demo_frame(100, 0)
    from_all, from_train = make_splits({"all": df}, SplitParams()), make_splits({"train": df}, SplitParams())
    for name in ("train", "validation", "test"):
        pd.testing.assert_frame_equal(from_all[name], from_train[name])


def test_carve_plan_tells_validation_what_will_be_split() -> None:
    split = SplitParams(validation=0.1, test=0.2)
    assert carve_plan(["all"], split) == ("all", pytest.approx((0.7, 0.1, 0.2)))
    assert carve_plan(["test", "train", "validation"], split) is None
    assert carve_plan(["train", "validation"], split) == ("train", pytest.approx((0.8, 0.2)))


@pytest.mark.parametrize("keys", [["validation", "test"], ["all", "train"], ["train", "holdout"]])
def test_unusable_split_names_are_data_errors(keys: list[str]) -> None:
    with pytest.raises(DataError, match="split"):
        make_splits({k: three_classes(20) for k in keys}, SplitParams())
