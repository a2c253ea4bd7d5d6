"""Splits: stratified, seeded, disjoint, stable per text as data grows; pre-splits respected."""

import pandas as pd
import pytest

from bitune.data.demo import make_demo_frame
from bitune.data.splits import carve_plan, make_splits, min_rows_per_class, split_frame, split_key
from bitune.data.validation import validate_frames
from bitune.errors import DataError
from bitune.params import DataParams, SplitParams


def three_classes(per_class: int) -> pd.DataFrame:
    labels = ["a"] * per_class + ["b"] * per_class * 2 + ["c"] * per_class
    return pd.DataFrame({"text": [f"text {i}" for i in range(len(labels))], "label": labels})


def test_split_is_stratified_disjoint_complete_and_sized_by_params() -> None:
    """Each row's part comes from a hash, so sizes are binomial: within 4 standard deviations."""
    df = three_classes(1000)
    parts = split_frame(df, SplitParams(validation=0.2, test=0.1, seed=3))
    texts = [set(p["text"]) for p in parts.values()]
    assert set.union(*texts) == set(df["text"]) and sum(map(len, texts)) == len(df)
    wanted = {"train": 0.7, "validation": 0.2, "test": 0.1}
    for name, part in parts.items():
        assert part.index.equals(pd.RangeIndex(len(part)))
        for label, rows in df["label"].value_counts().items():
            share = (part["label"] == label).sum() / rows  # this class's rows that landed in this part
            sd = (wanted[name] * (1 - wanted[name]) / rows) ** 0.5
            assert share == pytest.approx(wanted[name], abs=4 * sd), (name, label, share)


def grown(df: pd.DataFrame, extra: pd.DataFrame) -> pd.DataFrame:
    """A later data version: the old rows, reordered, with new rows mixed in."""
    return pd.concat([df, extra]).sample(frac=1, random_state=7).reset_index(drop=True)


def test_rows_keep_their_split_when_the_data_grows() -> None:
    """600 -> 660 rows (the audit's case): no old test row leaves test, no old train row enters test."""
    v1 = make_demo_frame(600, 0)
    v2 = grown(v1, make_demo_frame(2000, 1).loc[lambda f: ~f["text"].isin(v1["text"])].head(60))
    split = SplitParams(validation=0.15, test=0.15, seed=0)
    before, after = split_frame(v1, split), split_frame(v2, split)
    for name in ("train", "validation", "test"):
        old = set(before[name]["text"])
        assert old <= set(after[name]["text"]), name  # every old row is where it was
        assert not old & set().union(*(set(after[o]["text"]) for o in after if o != name))
    for name, wanted in (("validation", 0.15), ("test", 0.15)):
        for label in ("negative", "positive"):
            share = (after[name]["label"] == label).sum() / (v2["label"] == label).sum()
            assert share == pytest.approx(wanted, abs=0.07), (name, label, share)


def test_repeated_texts_share_one_split_even_when_spelled_differently() -> None:
    base = make_demo_frame(400, 3)
    repeats = base.head(40).assign(text=lambda f: "  " + f["text"].str.upper() + " ")
    parts = split_frame(pd.concat([base, repeats, base.tail(30)]), SplitParams(seed=5))
    where = {
        split_key(text): name for name in ("train", "validation", "test") for text in parts[name]["text"]
    }
    for name, part in parts.items():
        assert all(where[split_key(text)] == name for text in part["text"]), name
    assert len({split_key(t) for t in repeats["text"]} & {split_key(t) for t in parts["test"]["text"]}) > 0


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
    train, validation = three_classes(500), three_classes(5)
    parts = make_splits({"train": train, "validation": validation}, SplitParams(test=0.2, seed=0))
    pd.testing.assert_frame_equal(parts["validation"], validation)
    assert len(parts["test"]) + len(parts["train"]) == len(train)
    counts = parts["test"]["label"].value_counts()
    for label, rows in train["label"].value_counts().items():
        assert counts[label] / rows == pytest.approx(0.2, abs=4 * (0.16 / rows) ** 0.5), label
    assert not set(parts["test"]["text"]) & set(parts["train"]["text"])
    again = make_splits({"train": train, "validation": validation}, SplitParams(test=0.2, seed=0))
    pd.testing.assert_frame_equal(parts["test"], again["test"])


def test_missing_validation_is_carved_out_of_train() -> None:
    train, test = three_classes(500), three_classes(5)
    parts = make_splits({"train": train, "test": test}, SplitParams(validation=0.1))
    pd.testing.assert_frame_equal(parts["test"], test)
    assert len(parts["validation"]) + len(parts["train"]) == len(train)
    assert len(parts["validation"]) / len(train) == pytest.approx(0.1, abs=4 * (0.09 / len(train)) ** 0.5)
    assert not set(parts["validation"]["text"]) & set(parts["train"]["text"])


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
